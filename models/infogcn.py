"""InfoGCN (Chi et al., CVPR 2022), state_dict-compatible with ``stnoah1/infogcn`` ``model/infogcn.py``.

Pipeline: each frame's joints are mixed by the fixed matrix ``A_vector = I - A_outward^k``
(k = 1: every joint minus its parent, i.e. bone vectors), embedded by ``Linear(in_channels, 64)``
plus a learned per-joint ``pos_embedding``, normalised by ``data_bn`` over (person, joint, channel),
then nine :class:`EncodingBlock` blocks (64 ×3, 128 ×3, 256 ×3; stride 2 at l4 and l7). The spatial
unit :class:`SAGC` multiplies a self-attention map per head by a learned ``shared_topology``
(initialised to the identity). The head is the information-bottleneck one: pooled features →
``relu(fc)`` → ``fc_mu`` / ``fc_logvar`` → latent ``z`` (= mu in eval, mu + eps·exp(noise_ratio·logvar)
in train) → ``decoder`` → logits.

The training objective is the official ``main.py``'s: label-smoothed CE (the recipe) +
``lambda_2 · MMD + lambda_1 · ||mean z||`` (:func:`latent_regularisers`, official
``loss.get_mmd_loss``; ``lambda_1 = 1e-4``, ``lambda_2 = 0.1`` as the official defaults).
:meth:`InfoGCN.head_with_latent` returns ``(logits, z)``; ``forward``/``head`` return the logits only
(the encoder contract; the official ``forward`` returns ``(y_hat, z)``) and, in train mode, keep
``z`` for :meth:`InfoGCN.regulariser`, which the trainer adds to the loss. ``z_prior`` is a
(non-persistent) buffer.

Details that differ from CTR-GCN and are reproduced here:

* InfoGCN's own ``MultiScale_TemporalConv`` (:class:`InfoGCNTemporalConv`) keeps PyTorch's default
  initialisation (no ``weights_init``: its BatchNorm weights are exactly 1) and ends with a ReLU, so a
  block computes ``relu(relu(tcn(gcn(x))) + residual(x))``.
* ``A_vector``: the official NTU graph (``graph/ntu_rgb_d.py``) orients the tree away from joint 2
  (index 1), not CTR-GCN's joint 21, so ``A_outward[child, parent] = 1`` and ``A_vector @ x`` gives
  ``x[v] - x[parent(v)]`` with the root kept. The official NW-UCLA file (``graph/ucla.py``) keeps
  CTR-GCN's orientation and the other index order, ``A_outward[parent, child] = 1``: there
  ``A_vector @ x`` is "joint minus the sum of its children". That inconsistency is the official
  behaviour and is kept on purpose (a model trained with the official code on NW-UCLA, and any
  fixture recorded from it, see exactly this input). See :func:`outward_matrix`.
* ``k=0`` (the official default) makes ``A_vector = I - I = 0`` and zeroes the input; the README's
  training command uses ``k=1``. The default is kept for fidelity.

Other deviations (none changes a number): ``graph`` is a layout name (``'ntu'``, ``'ucla'``);
``A_vector`` is a non-persistent float32 buffer (officially a float64 attribute, which the official
forward cannot even multiply with float32 input outside mixed precision; the entries are small
integers, so the cast is exact); ``z_prior`` is a non-persistent buffer drawn with ``orthogonal_``
at the official point of construction (so the random draws that follow stay aligned).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.adjacency import edge_matrix, inward_edges, num_nodes, reroot
from models.encoder import Encoder, at_least_float32, mean_pool
from models.units import MultiScaleTemporalConv, UnitTCN, bn_init, conv_branch_init, conv_init, residual_branch

# Root of the tree that the official InfoGCN NTU graph is oriented from: joint 2 (spine middle).
_NTU_ROOT = 1


def outward_matrix(graph: str | None) -> Tensor:
    """The official ``Graph().A_outward_binary`` of a layout name, float64 (V, V).

    ``'ntu'``: ``A[child, parent] = 1`` on the tree rooted at joint 2 (InfoGCN's own edge list).
    ``'ucla'``: ``A[parent, child] = 1`` on CTR-GCN's tree rooted at joint 3, because the official
    file lists the same edges in the opposite order (see the module docstring).
    """
    if graph is None:
        raise ValueError("graph is required (one of ['ntu', 'ucla'])")  # the official fails too
    if graph == "ntu":
        return edge_matrix(reroot(inward_edges("ntu"), _NTU_ROOT), num_nodes("ntu")).T
    if graph == "ucla":
        return edge_matrix(inward_edges("ucla"), num_nodes("ucla"))
    raise ValueError(f"unknown graph {graph!r} for InfoGCN; known: ['ntu', 'ucla']")


def joint_mixing(graph: str | None, k: int) -> Tensor:
    """``A_vector = I - A_outward^k`` in float64 (official ``InfoGCN.get_A``)."""
    A = outward_matrix(graph)
    return torch.eye(A.shape[0], dtype=torch.float64) - torch.linalg.matrix_power(A, k)


class InfoGCNTemporalConv(MultiScaleTemporalConv):
    """InfoGCN's ``MultiScale_TemporalConv``: the shared multi-scale TCN with default init and a final ReLU.

    The parent applies CTR-GCN's ``weights_init``; InfoGCN's copy does not (its BatchNorm weights are
    exactly 1, as the fixture shows). To keep the official random draws (seeded construction equal
    to the official bit for bit), the CPU generator is rewound after the parent's constructor and
    PyTorch's default initialisation is replayed on each conv/BN in creation order, which is exactly
    what the official constructor drew. The final ReLU is the official ``self.act`` (dropping it
    moves the fixture's perturbed logits by about 3.8).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 1,
                 dilations: tuple[int, ...] = (1, 2)) -> None:
        rng = torch.get_rng_state()
        super().__init__(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                         dilations=dilations, residual=False)
        torch.set_rng_state(rng)
        for m in self.modules():  # creation order: branch by branch, conv before its BN
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
                m.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:  # (N·M, C, T, V) -> (N·M, C, T / stride, V)
        return torch.relu(super().forward(x))


class InfoGCNSelfAttention(nn.Module):
    """Official ``SelfAttention``: per-frame joint attention maps, one per head (no values).

    LayerNorm over channels, ``to_qk`` (weight ~ N(0, 1)), scaled dot products, softmax over keys.
    """

    def __init__(self, in_channels: int, hidden_dim: int, n_heads: int) -> None:
        super().__init__()
        self.scale = hidden_dim ** -0.5
        self.n_heads = n_heads
        self.to_qk = nn.Linear(in_channels, hidden_dim * n_heads * 2)
        self.ln = nn.LayerNorm(in_channels)
        nn.init.normal_(self.to_qk.weight, 0, 1)

    def forward(self, x: Tensor) -> Tensor:  # (N, C, T, V) -> (N·T, H, V, V)
        N, _, T, V = x.shape
        y = self.to_qk(self.ln(x.permute(0, 2, 3, 1).contiguous()))  # (N, T, V, 2·H·D)
        q, k = (t.reshape(N * T, V, self.n_heads, -1).transpose(1, 2) for t in y.chunk(2, dim=-1))  # (N·T, H, V, D)
        dots = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale  # (N·T, H, V, V)
        return dots.softmax(dim=-1)


class SAGC(nn.Module):
    """Official ``SA_GC``: self-attention graph convolution.

    Head ``h`` aggregates joints with ``attn[h] * shared_topology[h]`` and projects with ``conv_d[h]``;
    the heads are summed, batch-normalised (weight 1e-6 at init), added to ``down(x)``, ReLU.
    Keys: ``shared_topology``, ``conv_d.{h}``, ``down.{0,1}`` (width change only), ``bn``, ``attn.{to_qk, ln}``.
    """

    def __init__(self, in_channels: int, out_channels: int, A: Tensor) -> None:
        super().__init__()
        self.num_head = A.shape[0]
        self.shared_topology = nn.Parameter(A.to(torch.float32).clone())  # (H, V, V)
        self.conv_d = nn.ModuleList(nn.Conv2d(in_channels, out_channels, 1) for _ in range(self.num_head))
        self.down = residual_branch(
            in_channels, out_channels,
            projection=lambda i, o, s: nn.Sequential(nn.Conv2d(i, o, 1), nn.BatchNorm2d(o)))
        self.bn = nn.BatchNorm2d(out_channels)
        # Official init order: conv_init/bn_init over all submodules, the 1e-6 BN, then the
        # per-head branch init; the attention is created (and drawn) last.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                conv_init(m)
            elif isinstance(m, nn.BatchNorm2d):
                bn_init(m, 1)
        bn_init(self.bn, 1e-6)
        for conv in self.conv_d:
            conv_branch_init(conv, self.num_head)
        self.attn = InfoGCNSelfAttention(in_channels, in_channels // 8, self.num_head)

    def forward(self, x: Tensor) -> Tensor:  # (N, C_in, T, V) -> (N, C_out, T, V)
        N, C, T, V = x.shape
        A = self.attn(x) * self.shared_topology.unsqueeze(0)  # (N·T, H, V, V)
        feature = x.permute(0, 2, 3, 1).reshape(N * T, V, C)  # (N·T, V, C)
        out = x.new_zeros(())
        for h in range(self.num_head):
            z = A[:, h] @ feature  # (N·T, V, C): joints aggregated with head h's topology
            z = z.reshape(N, T, V, C).permute(0, 3, 1, 2).contiguous()  # (N, C, T, V)
            out = self.conv_d[h](z) + out  # 0 + z is exact, so this is the official running sum
        return torch.relu(self.bn(out) + self.down(x))


class EncodingBlock(nn.Module):
    """Official ``EncodingBlock``: ``relu(tcn(agcn(x)) + residual(x))``; keys ``agcn``, ``tcn``, ``residual``.

    Built agcn → tcn → residual like the official.
    """

    def __init__(self, in_channels: int, out_channels: int, A: Tensor, stride: int = 1) -> None:
        super().__init__()
        self.agcn = SAGC(in_channels, out_channels, A)
        self.tcn = InfoGCNTemporalConv(out_channels, out_channels, kernel_size=5, stride=stride, dilations=(1, 2))
        self.residual = residual_branch(
            in_channels, out_channels, stride,
            projection=lambda i, o, s: UnitTCN(i, o, kernel_size=1, stride=s))

    def forward(self, x: Tensor) -> Tensor:  # (N·M, C_in, T, V) -> (N·M, C_out, T / stride, V)
        return torch.relu(self.tcn(self.agcn(x)) + self.residual(x))


def latent_regularisers(z: Tensor, z_prior: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """InfoGCN's two latent terms (official ``loss.get_mmd_loss``), vectorised and without host sync.

    * ``mmd``: mean squared difference between each batch class's mean latent and its prior row,
      over the classes present in the batch and the latent dimensions (``F.mse_loss(z_mean[valid],
      z_prior[valid])``);
    * ``l2_z_mean``: the L2 norm of the batch's mean latent.

    z: (N, d) latents; z_prior: (num_class, d); labels: (N,) in ``[0, num_class)``.
    """
    num_class, d = z_prior.shape
    counts = torch.bincount(labels, minlength=num_class)  # (num_class,)
    sums = z.new_zeros(num_class, d).index_add(0, labels, z)  # (num_class, d)
    z_mean = sums / counts.clamp_min(1)[:, None]
    present = (counts > 0).to(z.dtype)
    mmd = (((z_mean - z_prior.to(z.dtype)) ** 2).sum(1) * present).sum() / (present.sum() * d)
    return mmd, z.mean(0).norm()


class InfoGCN(Encoder):
    """InfoGCN encoder. Final map (N·M, 256, T/4, V) (output of ``l9``); head = mean pool → VIB → decoder.

    Constructor arguments are the official ``InfoGCN``'s, ``graph`` a layout name, plus ``lambda_1`` /
    ``lambda_2``: the weights of the latent terms of the objective (official ``main.py``'s
    ``--lambda_1`` / ``--lambda_2``; 0 and 0 drop them). ``forward(x)`` returns logits; use
    :meth:`head_with_latent` for ``(logits, z)``.
    """

    def __init__(self, num_class: int = 60, num_point: int = 25, num_person: int = 2, graph: str | None = "ntu",
                 in_channels: int = 3, drop_out: float = 0, num_head: int = 3, noise_ratio: float = 0.1,
                 k: int = 0, gain: float = 1, lambda_1: float = 1e-4, lambda_2: float = 0.1) -> None:
        super().__init__()
        self.lambda_1, self.lambda_2 = float(lambda_1), float(lambda_2)
        self._latent: Tensor | None = None  # z of the last train-mode head(), for regulariser()
        A_vector = joint_mixing(graph, k)  # (V, V) float64; validates the graph name
        if A_vector.shape[0] != num_point:
            raise ValueError(f"graph {graph!r} has {A_vector.shape[0]} joints, but num_point={num_point}")
        A = torch.eye(num_point, dtype=torch.float64).repeat(num_head, 1, 1)  # (H, V, V) initial topology
        base = 64
        self.num_class = num_class
        self.num_point = num_point
        self.num_person = num_person
        self.noise_ratio = noise_ratio
        self.gain = gain
        self.data_bn = nn.BatchNorm1d(num_person * base * num_point)
        self.register_buffer("z_prior", torch.empty(num_class, base * 4), persistent=False)  # drawn below
        self.register_buffer("A_vector", A_vector.to(torch.float32), persistent=False)
        self.to_joint_embedding = nn.Linear(in_channels, base)
        self.pos_embedding = nn.Parameter(torch.randn(1, num_point, base))

        plan = [(base, base, 1), (base, base, 1), (base, base, 1),
                (base, 2 * base, 2), (2 * base, 2 * base, 1), (2 * base, 2 * base, 1),
                (2 * base, 4 * base, 2), (4 * base, 4 * base, 1), (4 * base, 4 * base, 1)]
        for i, (c_in, c_out, stride) in enumerate(plan, start=1):
            setattr(self, f"l{i}", EncodingBlock(c_in, c_out, A, stride=stride))
        self.out_channels = 4 * base

        self.fc = nn.Linear(4 * base, 4 * base)
        self.fc_mu = nn.Linear(4 * base, 4 * base)
        self.fc_logvar = nn.Linear(4 * base, 4 * base)
        self.decoder = nn.Linear(4 * base, num_class)
        nn.init.orthogonal_(self.z_prior, gain=gain)
        for lin in (self.fc, self.fc_mu, self.fc_logvar):
            nn.init.xavier_uniform_(lin.weight, gain=nn.init.calculate_gain("relu"))
        nn.init.normal_(self.decoder.weight, 0, math.sqrt(2.0 / num_class))
        bn_init(self.data_bn, 1)
        self.drop_out = nn.Dropout(drop_out) if drop_out else nn.Identity()

    def features(self, x: Tensor) -> Tensor:
        N, C, T, V, M = x.shape
        x = x.permute(0, 4, 2, 3, 1).reshape(N * M * T, V, C)  # (N·M·T, V, C), rows (n, m, t)
        x = self.A_vector.expand(N * M * T, -1, -1) @ x  # mix joints (k = 1: bone vectors)
        x = self.to_joint_embedding(x) + self.pos_embedding[:, :self.num_point]  # (N·M·T, V, 64)
        x = x.view(N, M, T, V, -1).permute(0, 1, 3, 4, 2).reshape(N, M * V * x.shape[-1], T)  # (N, M·V·64, T)
        x = x.contiguous()  # M = 1 gives a strided view; BatchNorm's kernel (and its last bits) depends on it
        x = self.data_bn(x)
        x = x.view(N, M, V, -1, T).permute(0, 1, 3, 4, 2).reshape(N * M, -1, T, V).contiguous()  # (N·M, 64, T, V)
        for i in range(1, 10):
            x = getattr(self, f"l{i}")(x)
        return x  # (N·M, 256, T/4, V)

    def latent_sample(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """``mu`` in eval; ``mu + eps · min(exp(noise_ratio · logvar), 100)`` in train.

        ``eps`` comes from torch's global RNG, like the official, so ``torch.manual_seed`` fixes it.
        """
        if not self.training:
            return mu
        std = torch.clamp(logvar.mul(self.noise_ratio).exp(), max=100)
        eps = torch.empty_like(std).normal_()
        return eps.mul(std) + mu

    def head_with_latent(self, features: Tensor, num_person: int) -> tuple[Tensor, Tensor]:
        """Final map and M -> ``(logits (N, num_class), z (N, 256))``: what the official forward returns.

        ``z`` is ``fc_mu``'s output in eval and the reparameterised sample in train; the trainer
        needs it (with :attr:`z_prior`) for InfoGCN's MMD loss.
        """
        x = torch.relu(self.fc(mean_pool(features, num_person)))  # (N, 256)
        x = self.drop_out(x)
        z = self.latent_sample(self.fc_mu(x), self.fc_logvar(x))  # (N, 256)
        return self.decoder(z), z

    def head(self, features: Tensor, num_person: int) -> Tensor:
        logits, z = self.head_with_latent(features, num_person)
        self._latent = z if self.training else None
        return logits

    def regulariser(self, labels: Tensor) -> Tensor | None:
        """``lambda_2 · MMD + lambda_1 · ||mean z||`` of the last train-mode forward (consumed here).

        None when both weights are 0 or no train-mode forward came before.
        """
        z, self._latent = self._latent, None
        if z is None or (self.lambda_1 == 0 and self.lambda_2 == 0):
            return None
        mmd, l2_z_mean = latent_regularisers(at_least_float32(z), self.z_prior, labels.to(z.device, torch.long))
        return self.lambda_2 * mmd + self.lambda_1 * l2_z_mean
