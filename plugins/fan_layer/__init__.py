"""mlpdeploy::FANLayer — Fourier Analysis Network layer: concat[cos(x·W_p + b_p), sin(x·W_p + b_p), act(x·W_g + b_g)]."""
