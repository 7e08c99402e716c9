"""The Inception models, with the module names of the peer each one is a drop-in for.

    >>> import inception_fast.models as models
    >>> models.list_models()
    ['bn_inception', 'googlenet', 'inception_resnet_v1', 'inception_resnet_v2', 'inception_v3', 'inception_v4']
    >>> m = models.create_model("inception_v3", num_classes=10)

| builder | paper | peer whose state_dict loads as it is |
|---|---|---|
| googlenet | Inception-v1 (Szegedy et al. 2014) | torchvision googlenet |
| bn_inception | BN-Inception (Ioffe & Szegedy 2015) | pretrainedmodels bninception |
| inception_v3 | Inception-v3 (Szegedy et al. 2015) | torchvision inception_v3; timm inception_v3 (aux_logits=False) |
| inception_v4 | Inception-v4 (Szegedy et al. 2016) | timm inception_v4 |
| inception_resnet_v1 | Inception-ResNet-v1 (2016) | facenet-pytorch InceptionResnetV1 (embedding_size=512) |
| inception_resnet_v2 | Inception-ResNet-v2 (2016) | timm inception_resnet_v2 |

`inception_v3_fid` (not in the registry: a metric's network, not a classifier to train) is the FID
Inception of pytorch-fid / torch-fidelity (inception_fast.metrics).
"""
from inception_fast.models._base import GlobalPool2d, InceptionModel
from inception_fast.models._registry import create_model, list_models, register_model
from inception_fast.models._timm import register_timm
from inception_fast.models._weights import load_pretrained, load_weights
from inception_fast.models.bn_inception import BNInception, bn_inception
from inception_fast.models.googlenet import GoogLeNet, GoogLeNetOutputs, googlenet
from inception_fast.models.inception_resnet_v1 import InceptionResnetV1, inception_resnet_v1
from inception_fast.models.inception_resnet_v2 import InceptionResnetV2, inception_resnet_v2
from inception_fast.models.inception_v3 import Inception3, InceptionOutputs, inception_v3
from inception_fast.models.inception_v3_fid import InceptionV3FID, inception_v3_fid
from inception_fast.models.inception_v4 import InceptionV4, inception_v4

__all__ = [
    "BNInception", "GlobalPool2d", "GoogLeNet", "GoogLeNetOutputs", "Inception3", "InceptionModel",
    "InceptionOutputs", "InceptionResnetV1", "InceptionResnetV2", "InceptionV3FID", "InceptionV4", "bn_inception",
    "create_model", "googlenet", "inception_resnet_v1", "inception_resnet_v2", "inception_v3", "inception_v3_fid",
    "inception_v4", "list_models", "load_pretrained", "load_weights", "register_model", "register_timm",
]
