"""What sdserve knows about ControlNet without torch: the API and the engine share it.

- :mod:`~sdserve.models.controlnet.preprocessors`: the built-in preprocessors (those that need
  no model weights) that turn a control image into a control map, under the module names of
  AUTOMATIC1111's ControlNet extension, with their sliders for ``/controlnet/module_list``.

Nothing here imports torch (the ``api-torch-free`` import contract covers ``sdserve.models``).
"""
