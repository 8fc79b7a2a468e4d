"""A trained proxy FLUX and a GenEval-style scorer, for judging ternary recipes on CPU.

* :mod:`.scenes` renders multi-object scenes with captions from a small grammar;
* :mod:`.encoding` is the frozen toy text encoder and the 16-channel space-to-depth "VAE";
* :mod:`.model` trains (deterministically, cached) and samples the proxy FLUX (FLUX.1
  architecture, ``proxy/data/proxy-flux.safetensors``) and its FLUX.2-architecture twin
  (``FLUX2_PROXY``, ``proxy/data/proxy-flux2.safetensors``);
* :mod:`.geneval` scores images against captions (GenEval's six tasks, no learned detector);
* :mod:`.quality` ties them to the tool: calibration from the float model's trajectories,
  sampling checkpoints, scores, image grids.

Library code: no argparse, no ComfyUI.
"""
