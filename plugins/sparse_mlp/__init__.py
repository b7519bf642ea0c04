"""mlpdeploy::SparseMLP: contextual sparsity (Deja Vu / Polar Sparsity, CATS) — compute only the selected neurons."""
