"""What sdserve knows about models without torch: the API, the service and the engine share it.

- :mod:`~sdserve.models.families`: model families (sd1, sd2, sdxl, turbo…) and their defaults;
- :mod:`~sdserve.models.references`: what a reference is (hub id, diffusers folder,
  ``.safetensors`` file), the weight formats we refuse, and detection of a reference's family
  from its configs or checkpoint header (never its weights);
- :mod:`~sdserve.models.catalog`: the served models (:class:`~sdserve.models.catalog.ModelSpec`,
  :class:`~sdserve.models.catalog.ModelRegistry`): names, aliases, versions;
- :mod:`~sdserve.models.metadata`: the A1111 ``parameters`` text written into every image;
- :mod:`~sdserve.models.lora_tags`: A1111 ``<lora:name:weight>`` prompt tags;
- :mod:`~sdserve.models.results`: what the engine is given (hooks) and gives back (results);
- :mod:`~sdserve.models.settings`: the engine's settings (device, precision, fast path).

Nothing here imports torch, diffusers or transformers (an import-linter contract checks it):
the API process imports these modules and starts without them.
"""
