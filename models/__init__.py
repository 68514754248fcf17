"""DeconvNet and FCN-32s/16s/8s on VGG16, their ImageNet initialisation and checkpoints."""

from models.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    build_model,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)
from models.classes import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, VOC_CLASSES, voc_palette
from models.deconvnet import DeconvNet, deconvnet
from models.fcn import FCN, FCN8s, FCN16s, FCN32s, fcn8s, fcn16s, fcn32s
from models.pretrained import WeightsUnavailableError, load_vgg_state_dict, transplant_vgg
from models.vgg import VGG16, make_layers, mirror

__all__ = [
    "CheckpointError", "CheckpointMeta", "DeconvNet", "FCN", "FCN8s", "FCN16s", "FCN32s", "IGNORE_INDEX",
    "IMAGENET_MEAN", "IMAGENET_STD", "VGG16", "VOC_CLASSES", "WeightsUnavailableError", "build_model",
    "deconvnet", "fcn8s", "fcn16s", "fcn32s", "load_checkpoint", "load_vgg_state_dict", "make_layers",
    "mirror", "read_checkpoint_meta", "save_checkpoint", "transplant_vgg", "voc_palette",
]
