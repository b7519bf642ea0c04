"""mlpdeploy::GatedMLP — y = (act(x·W_gate + b_g) ⊙ (x·W_up + b_u))·W_down + b_d, gate half of W_gate_up first."""
