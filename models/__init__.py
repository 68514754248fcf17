"""DeconvNet and FCN-32s/16s/8s on VGG16, their ImageNet initialisation and checkpoints.

The names below are loaded on first use (PEP 562), so that importing a torch-free
submodule such as ``models.storage`` or ``models.classes`` does not load torch: the
CPU stages of the pipeline (decode, CRF, writer) import those, and torch would cost
each of their processes ~2.6 s and ~650 MB of memory.
"""

import importlib

_EXPORTS = {
    "models.build": ("ARCHITECTURES", "build_model"),
    "models.checkpoint": (
        "CheckpointError",
        "CheckpointMeta",
        "load_checkpoint",
        "read_checkpoint_meta",
        "save_checkpoint",
    ),
    "models.classes": ("IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD", "VOC_CLASSES", "voc_palette"),
    "models.deconvnet": ("DeconvNet",),
    "models.fold": ("fold_batchnorm",),
    "models.fcn": ("FCN",),
    "models.pretrained": ("WeightsUnavailableError", "load_vgg_state_dict", "transplant_vgg"),
    "models.vgg": ("VGG16", "make_layers", "mirror"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
