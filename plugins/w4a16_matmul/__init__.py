"""mlpdeploy::W4A16MatMul — y = x · W with W stored as 4-bit codes (NVFP4, MXFP4, INT4, INT4 with zero points), decoded in the GEMM."""
