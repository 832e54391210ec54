"""The small shared core: types, the trainer core, checkpointing, sharding, losses,
validation, precision and deprecation helpers. Private: the public names are re-exported by
mtpjax and its subpackages."""
