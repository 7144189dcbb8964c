"""Emulated `habana_frameworks.torch.dynamo`."""
