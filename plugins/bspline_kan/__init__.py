"""mlpdeploy::BSplineKAN — efficient-kan's layer: y = SiLU(x)·W_base + B(x)·W_spline, B = Cox–de Boor bases."""
