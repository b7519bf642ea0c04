"""mlpdeploy::GroupRational — GR-KAN's group-wise rational activation y = P(x) / Q(x), forms A and B."""
