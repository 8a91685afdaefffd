"""Skeleton layouts: joint counts, bone pairs and centre joints of NTU RGB+D and NW-UCLA.

Pure data, no torch: the feeder (bone modality, spine-relative variant) and, later, the graph
encoders (adjacency matrices) read the same tuples, so a bone definition cannot drift between them.

Bone pairs are **1-based** ``(child, parent)`` exactly as in the official CTR-GCN files
(``feeders/bone_pairs.py`` for NTU, ``Feeder.bone`` in ``feeders/feeder_ucla.py``): the bone
stream stores ``x[child] - x[parent]`` in the child's slot. Each layout has one self pair
(``(21, 21)`` for NTU, ``(3, 3)`` for NW-UCLA), the root whose bone is zero.
"""

from __future__ import annotations

from dataclasses import dataclass

NTU_BONE_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5),
    (7, 6), (8, 7), (9, 21), (10, 9), (11, 10), (12, 11),
    (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17),
    (19, 18), (20, 19), (22, 23), (21, 21), (23, 8), (24, 25), (25, 12),
)

UCLA_BONE_PAIRS: tuple[tuple[int, int], ...] = (
    (1, 2), (2, 3), (3, 3), (4, 3), (5, 3), (6, 5), (7, 6), (8, 7), (9, 3), (10, 9),
    (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19),
)


@dataclass(frozen=True)
class Layout:
    """One skeleton layout.

    ``center`` (0-based) is the joint the spine-relative variant (Hyperformer, BlockGCN, CSRE)
    re-centres each frame on: NTU's spine joint #21 (index 20) and NW-UCLA's joint #3 (index 2).
    ``origin`` (0-based) is the joint the NW-UCLA feeder subtracts (from frame 0) before its view
    transform: joint #2 (index 1). The NTU feeder does no translation (the preprocessing already
    centred the data), so ``origin`` there only records the preprocessing's spine-middle joint #2.
    """

    name: str
    num_joints: int
    bone_pairs: tuple[tuple[int, int], ...]
    center: int
    origin: int

    def __post_init__(self) -> None:
        children = sorted(c for c, _ in self.bone_pairs)
        if children != list(range(1, self.num_joints + 1)):
            raise ValueError(f"layout {self.name}: every joint must be the child of exactly one bone pair")
        if not all(1 <= p <= self.num_joints for _, p in self.bone_pairs):
            raise ValueError(f"layout {self.name}: bone parent outside 1..{self.num_joints}")

    @property
    def root(self) -> int:
        """0-based index of the joint whose bone is itself (zero in the bone stream)."""
        return next(c - 1 for c, p in self.bone_pairs if c == p)

    @property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """0-based (child, parent) pairs without the self pair: the skeleton's physical edges."""
        return tuple((c - 1, p - 1) for c, p in self.bone_pairs if c != p)


NTU = Layout(name="ntu", num_joints=25, bone_pairs=NTU_BONE_PAIRS, center=20, origin=1)
UCLA = Layout(name="ucla", num_joints=20, bone_pairs=UCLA_BONE_PAIRS, center=2, origin=1)

LAYOUTS: dict[str, Layout] = {"ntu": NTU, "ucla": UCLA}

# Dataset names (the HDF5 ``dataset`` attribute) -> layout name.
DATASET_LAYOUT: dict[str, str] = {"ntu60": "ntu", "ntu120": "ntu", "ucla": "ucla"}


def layout_for(dataset: str | None = None, num_joints: int | None = None) -> Layout:
    """The layout of a dataset name, else of a joint count; errors when neither decides or they disagree."""
    if dataset is not None and dataset in DATASET_LAYOUT:
        layout = LAYOUTS[DATASET_LAYOUT[dataset]]
        if num_joints is not None and num_joints != layout.num_joints:
            raise ValueError(f"dataset {dataset!r} has {layout.num_joints} joints, got V={num_joints}")
        return layout
    matches = [lay for lay in LAYOUTS.values() if lay.num_joints == num_joints]
    if len(matches) != 1:
        raise ValueError(f"cannot tell the skeleton layout of dataset {dataset!r} with V={num_joints}; "
                         f"known datasets {sorted(DATASET_LAYOUT)}, joint counts "
                         f"{sorted(lay.num_joints for lay in LAYOUTS.values())}")
    return matches[0]
