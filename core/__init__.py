"""Library core: packing, ternarization, the ternary weight/linear, the checkpoint format and
a plain-PyTorch FLUX. No ComfyUI imports."""
