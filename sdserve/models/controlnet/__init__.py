"""ControlNets: the served ones (``catalog``) and the built-in preprocessors that turn an
image into a control map (``preprocessors``). Torch-free: the API lists and checks them."""
