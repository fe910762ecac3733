"""The torch-module backend: precision, memory format and torch.compile settings of the U-Nets."""
