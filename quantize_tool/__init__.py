"""The offline tool (``ternaryflux`` console script): inspect, quantize, calibrate, distill,
evaluate and convert FLUX checkpoints without ComfyUI."""
