"""The peers (torchvision, timm, facenet-pytorch, pretrainedmodels) the models are checked against:
the configurations ours copies, and each model with its peer's random weights (BatchNorm statistics
and affine parameters randomised too). A peer that cannot be imported skips its cases with the reason."""
import dataclasses
import importlib
from typing import Callable

import pytest
import torch

from inception_fast import models


def _peer_factory(module: str, build: Callable):
    def make():
        try:
            mod = importlib.import_module(module)
        except Exception as e:  # an old pin that no longer imports counts as not installed
            pytest.skip(f"peer {module} cannot be imported ({type(e).__name__}: {e}); install it with "
                        f"`pip install --no-deps {module.replace('_', '-')}` to run this check")
        return build(mod)
    return make


@dataclasses.dataclass
class Case:
    name: str                 # our builder
    kwargs: dict              # our builder's arguments matching the peer's configuration
    peer: Callable            # () -> the peer model with random weights
    native: int               # the peer's native input size
    small: int | None         # a small input the peer runs at (None: the peer runs only at `native`)
    train_kwargs: dict = dataclasses.field(default_factory=dict)  # for the training-step check
    own_small: int = 75       # a small input ours runs at, for the checks without the peer


CASES = [
    Case("googlenet", dict(init_weights=False),
         _peer_factory("torchvision", lambda tv: tv.models.googlenet(weights=None, aux_logits=True, init_weights=True)),
         224, 75, dict(aux_logits=False)),
    Case("bn_inception", dict(),
         _peer_factory("pretrainedmodels", lambda pm: pm.bninception(num_classes=1000, pretrained=None)),
         224, None, own_small=64),  # BN-Inception takes sides 32k-1 .. 32k+6 only
    Case("inception_v3", dict(init_weights=False),
         _peer_factory("torchvision", lambda tv: tv.models.inception_v3(weights=None, aux_logits=True, init_weights=True)),
         299, 75, dict(aux_logits=False)),
    Case("inception_v3", dict(aux_logits=False),
         _peer_factory("timm", lambda timm: timm.create_model("inception_v3")), 299, 75),
    Case("inception_v4", dict(), _peer_factory("timm", lambda timm: timm.create_model("inception_v4")), 299, 75),
    Case("inception_resnet_v1", dict(embedding_size=512, num_classes=0),
         _peer_factory("facenet_pytorch", lambda fp: fp.InceptionResnetV1(pretrained=None, classify=False)),
         160, 75, dict(embedding_size=None)),
    Case("inception_resnet_v2", dict(),
         _peer_factory("timm", lambda timm: timm.create_model("inception_resnet_v2")), 299, 75),
]
CASE_IDS = ["googlenet", "bn_inception", "inception_v3-torchvision", "inception_v3-timm", "inception_v4",
            "inception_resnet_v1-facenet", "inception_resnet_v2"]
# One case per model for the checks that do not involve the peer.
MODEL_CASES = [c for c, i in zip(CASES, CASE_IDS) if i != "inception_v3-timm"]
MODEL_IDS = [c.name for c in MODEL_CASES]


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Random BN statistics and affine parameters: default ones (0, 1) would hide a swapped mean/var."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                if m.weight is not None:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.1)
    return model


_pairs: dict[str, tuple] = {}


def pair(case: Case):
    """(peer, ours) with the peer's random weights in both, eval mode; built once per case."""
    key = case.name + repr(sorted(case.kwargs.items())) + str(case.native)
    if key not in _pairs:
        torch.manual_seed(0)
        peer = randomise(case.peer()).eval()
        ours = models.create_model(case.name, **case.kwargs).eval()
        ours.load_state_dict(peer.state_dict(), strict=True)
        _pairs[key] = (peer, ours)
    return _pairs[key]
