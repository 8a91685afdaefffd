"""HCN (Li et al., IJCAI 2018), state_dict-compatible with ``huguyuehuhu/HCN-pytorch`` ``model/HCN.py``.

HCN is a CNN, not a graph network: per person, a position stream (x) and a motion stream (frame
differences, resampled back to T frames) each learn point-level features (``conv1``: 1x1,
``conv2``: 3x1 over time with ``window_size`` output channels), then **transpose joints into
channels** (``conv3`` sees (N, V, T, window_size)) to learn co-occurrence features. The streams are
concatenated, ``conv5``/``conv6`` follow, persons are merged by an element-wise max, and
``fc7``/``fc8`` classify.

Feature map for the CSRE head (``features``): ``conv6`` output per person,
(N·M, 256, T/16, window_size/16), rows in (n, m) order. There is no joint axis: **axis 2 (T') is
time** (T/16) and **axis 3 plays the role of V**: it is ``conv2``'s output channel axis
(window_size/16 after pooling), which mixes all joints. STFD's "spatial" branch therefore runs over
those channel groups, not over joints. ``head`` requires T/16 == window_size/16 (``fc7`` is sized by
``window_size``), i.e. clips of ``window_size`` frames as in the official feeder.

Deviations from the official code (numerical results are unchanged):

* persons are processed in a loop over all M persons, as the official code does (the loop is
  about 10 % faster on CPU than folding persons into the batch, and it draws the dropout masks in
  the official order), and merged with ``amax`` over all M persons instead of the hard-coded
  ``torch.max(logits[0], logits[1])``; so ``num_person=1`` (NW-UCLA) works, and for M = 2 the
  values are identical;
* ``F.upsample`` (deprecated) is replaced by ``F.interpolate`` with the same bilinear settings;
* ``fc7``'s ``Dropout2d`` on a 2-D input is ``nn.Dropout``: torch applies element-wise dropout
  to 2-D input in both cases (and warns for ``Dropout2d``); it has no state, keys are unchanged;
* the forward's NaN / all-zero ``assert``s and its unused ``target`` argument are dropped (the
  asserts force a host synchronisation every step).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.encoder import Encoder


def hcn_weights_init(m: nn.Module) -> None:
    """HCN-pytorch ``utils.weights_init``: Glorot-uniform bound sqrt(6 / (fan_in + fan_out)), zero bias."""
    if isinstance(m, nn.Conv2d):
        out_c, in_c, kh, kw = m.weight.shape
        fan_in, fan_out = in_c * kh * kw, kh * kw * out_c
    elif isinstance(m, nn.Linear):
        fan_out, fan_in = m.weight.shape
    else:
        return
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    m.weight.data.uniform_(-bound, bound)
    if m.bias is not None:
        m.bias.data.fill_(0)


def _leaves(module: nn.Module) -> list[nn.Module]:
    """Leaf modules in registration order (the order HCN-pytorch's ``initial_model_weight`` visits)."""
    children = list(module.children())
    if not children:
        return [module]
    return [leaf for child in children for leaf in _leaves(child)]


class HCN(Encoder):
    """HCN encoder; see the module docstring for what the axes of its feature map mean.

    Constructor arguments are the official ``HCN``'s. ``out_channels`` (the attribute, C' = 256 by
    default) is ``4 * out_channel`` (the constructor argument, the width of ``conv1``).
    """

    def __init__(self, in_channel: int = 3, num_joint: int = 25, num_person: int = 2, out_channel: int = 64,
                 window_size: int = 64, num_class: int = 60) -> None:
        super().__init__()
        self.num_person = num_person
        self.num_class = num_class
        self.window_size = window_size
        self.out_channels = out_channel * 4
        c = out_channel
        # position stream
        self.conv1 = nn.Sequential(nn.Conv2d(in_channel, c, kernel_size=1, stride=1, padding=0), nn.ReLU())
        self.conv2 = nn.Conv2d(c, window_size, kernel_size=(3, 1), stride=1, padding=(1, 0))
        self.conv3 = nn.Sequential(nn.Conv2d(num_joint, c // 2, kernel_size=3, stride=1, padding=1), nn.MaxPool2d(2))
        self.conv4 = nn.Sequential(nn.Conv2d(c // 2, c, kernel_size=3, stride=1, padding=1), nn.Dropout2d(p=0.5),
                                   nn.MaxPool2d(2))
        # motion stream (same shapes)
        self.conv1m = nn.Sequential(nn.Conv2d(in_channel, c, kernel_size=1, stride=1, padding=0), nn.ReLU())
        self.conv2m = nn.Conv2d(c, window_size, kernel_size=(3, 1), stride=1, padding=(1, 0))
        self.conv3m = nn.Sequential(nn.Conv2d(num_joint, c // 2, kernel_size=3, stride=1, padding=1), nn.MaxPool2d(2))
        self.conv4m = nn.Sequential(nn.Conv2d(c // 2, c, kernel_size=3, stride=1, padding=1), nn.Dropout2d(p=0.5),
                                    nn.MaxPool2d(2))
        # after concatenating position and motion
        self.conv5 = nn.Sequential(nn.Conv2d(2 * c, 2 * c, kernel_size=3, stride=1, padding=1), nn.ReLU(),
                                   nn.Dropout2d(p=0.5), nn.MaxPool2d(2))
        self.conv6 = nn.Sequential(nn.Conv2d(2 * c, 4 * c, kernel_size=3, stride=1, padding=1), nn.ReLU(),
                                   nn.Dropout2d(p=0.5), nn.MaxPool2d(2))
        self.fc7 = nn.Sequential(nn.Linear(4 * c * (window_size // 16) * (window_size // 16), 256 * 2), nn.ReLU(),
                                 nn.Dropout(p=0.5))
        self.fc8 = nn.Linear(256 * 2, num_class)
        for leaf in _leaves(self):
            hcn_weights_init(leaf)

    def _stream(self, x: Tensor, conv1: nn.Module, conv2: nn.Module, conv3: nn.Module, conv4: nn.Module) -> Tensor:
        out = conv2(conv1(x))  # (B, window, T, V): point-level features
        out = out.permute(0, 3, 2, 1).contiguous()  # (B, V, T, window): joints become channels
        return conv4(conv3(out))  # (B, C, T/4, window/4)

    def features(self, x: Tensor) -> Tensor:
        N, C, T, V, M = x.shape
        motion = (x[:, :, 1:] - x[:, :, :-1]).permute(0, 1, 4, 2, 3).reshape(N, C * M, T - 1, V)  # (N, C·M, T-1, V)
        motion = F.interpolate(motion, size=(T, V), mode="bilinear", align_corners=False)
        motion = motion.view(N, C, M, T, V)  # (N, C, M, T, V)
        per_person = []
        for m in range(M):  # the official loop: faster than a batch of N·M here, same dropout order
            out_p = self._stream(x[..., m], self.conv1, self.conv2, self.conv3, self.conv4)
            out_m = self._stream(motion[:, :, m], self.conv1m, self.conv2m, self.conv3m, self.conv4m)
            out = torch.cat((out_p, out_m), dim=1)  # (N, 2C, T/4, window/4)
            per_person.append(self.conv6(self.conv5(out)))  # (N, 4C, T/16, window/16)
        return torch.stack(per_person, dim=1).flatten(0, 1)  # (N·M, 4C, T/16, window/16), rows (n, m)

    @staticmethod
    def person_max(features: Tensor, num_person: int) -> Tensor:
        """Element-wise max over persons: (N·M, C', T', W') -> (N, C', T', W'), what ``fc7`` flattens."""
        NM = features.shape[0]
        return features.view(NM // num_person, num_person, *features.shape[1:]).amax(dim=1)

    def head(self, features: Tensor, num_person: int) -> Tensor:
        out = self.person_max(features, num_person).flatten(1)  # (N, C'·T'·W')
        return self.fc8(self.fc7(out))  # (N, num_class)
