"""Paper tables as data, the mapping to our cells, the checker's verdicts, the paired bootstrap, the verb."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from harness import paper
from harness.ensemble import ensemble_report
from harness.io import Scores, load_scores, read_json, save_scores, write_json, write_text
from tests.conftest import REPO

SHARED_JSON = REPO.parent / "shared" / "paper" / "paper_tables.json"
N, C = 1000, 5  # fake test set: 1000 samples (0.1 pp per sample), 5 classes


# --------------------------------------------------------------------------- fake run directories

def hits_with(k: int, n: int = N, offset: int = 0) -> np.ndarray:
    """(n,) bool: samples offset..offset+k-1 (cyclically) right, the others wrong."""
    hit = np.zeros(n, dtype=bool)
    hit[(np.arange(k) + offset) % n] = True
    return hit


def make_run(root: Path, benchmark: str, encoder: str, stream: str, csre: bool, seed: int, hits: np.ndarray, *,
             profile: str = "paper", shuffle: bool = False, config: str | None = None, finished: bool = True,
             cost: dict | None = None, per_class: dict | None = None, best_hits: np.ndarray | None = None,
             best_epoch: int = 9, val_top1: float | None = None) -> Path:
    """A run directory as the trainer writes it: metrics.json (cell, last.test, best_on_test and,
    with ``val_top1``, best_on_val), scores_test.npz (last epoch 9) and scores_test_best.npz (the
    best test epoch: ``best_hits`` at ``best_epoch``; by default the last epoch is the best)."""
    d = root / benchmark / encoder / stream / ("csre" if csre else "base") / f"seed{seed}" / profile
    if config is not None:
        d = d / config.replace(" ", "").replace("=", "_").replace("'", "")[:20]
    def scores(h: np.ndarray, epoch: int) -> Scores:
        n = h.shape[0]
        labels = np.arange(n) % C
        pred = np.where(h, labels, (labels + 1) % C)
        logits = np.eye(C, dtype=np.float32)[pred]  # one-hot on the prediction
        names = np.array([f"S{i:04d}" for i in range(n)])
        if shuffle:  # score files may order samples differently: the checker aligns by name
            order = np.random.default_rng(seed + 7).permutation(n)
            logits, labels, names = logits[order], labels[order], names[order]
        return Scores(logits, labels, names, epoch)

    if best_hits is None:
        best_hits, best_epoch = hits, 9
    n = hits.shape[0]
    save_scores(d / "scores_test.npz", scores(hits, 9))
    save_scores(d / "scores_test_best.npz", scores(best_hits, best_epoch))
    test = {"top1": 100.0 * hits.mean(), "top5": 100.0, "n": n}
    best = {"top1": 100.0 * best_hits.mean(), "top5": 100.0, "n": n}
    if per_class is not None:
        test.update(per_class)
        best.update(per_class)
    doc = {"cell": {"benchmark": benchmark, "encoder": encoder, "stream": stream, "csre": csre, "seed": seed,
                    "profile": profile},
           "finished": finished, "headline": "last epoch (test)", "last": {"epoch": 9, "test": test},
           "best_on_test": {"selected_on": "test", "epoch": best_epoch, "test": best},
           "cost": cost or {"seconds_per_epoch": 60.0, "peak_memory_mb": 1024.0}}
    if val_top1 is not None:
        doc["best_on_val"] = {"selected_on": "val", "epoch": 5, "val": {"top1": val_top1}, "test": {"top1": val_top1}}
    write_json(d / "metrics.json", doc)
    if config is not None:
        write_text(d / "config.gin", config + "\n")
    return d


def entries(report: dict, table: str, row: str, column: str) -> list[dict]:
    t = next(t for t in report["tables"] if t["id"] == table)
    return [e for e in t["entries"] if e["row"] == row and e["column"] == column]


def entry(report: dict, table: str, row: str, column: str, profile: str | None = "paper") -> dict:
    found = [e for e in entries(report, table, row, column) if e["profile"] == profile]
    assert len(found) == 1, (table, row, column, profile, entries(report, table, row, column))
    return found[0]


# --------------------------------------------------------------------------- the tables

def test_package_copy_is_byte_identical_to_the_shared_file():
    if not SHARED_JSON.is_file():
        pytest.skip(f"{SHARED_JSON} not present")
    assert paper.PAPER_JSON.read_bytes() == SHARED_JSON.read_bytes()


def test_parse_value():
    assert paper.parse_value(89.8) == (89.8, "")
    assert paper.parse_value(91) == (91.0, "")
    assert paper.parse_value("84.3*") == (84.3, "*")
    assert paper.parse_value("-") == ("-", "")
    assert paper.parse_value(None) == (None, "")
    for bad in ("n/a", "", True, [1.0], {"a": 1}, float("nan"), "8 4", "-1.0"):
        with pytest.raises(ValueError):
            paper.parse_value(bad)


def test_every_cell_of_the_real_file_parses_and_maps():
    tables = paper.load_tables()
    assert [t.id for t in tables] == list(paper.ROW_TARGETS) == list(paper.COLUMN_TARGETS)
    assert tables.odd() == []
    kinds = {"reported": 0, "not_reported": 0, "lost": 0}
    for t in tables:
        label_cols = paper.LABEL_COLUMNS.get(t.id, ())
        assert set(t.columns) == set(paper.COLUMN_TARGETS[t.id]) | set(label_cols), t.id
        assert set(t.rows) == set(paper.ROW_TARGETS[t.id]), t.id  # every row is listed: ours or not ours
        for row in t.rows.values():
            assert set(row.cells) | set(row.labels) == set(t.columns)
            for cell in row.cells.values():
                kinds[cell.status] += 1
                assert cell.value is None or cell.value == "-" or isinstance(cell.value, float)
                target = paper.target_of(t.id, row.name, cell.column)
                if isinstance(target, str):
                    assert target in (paper.OTHER, paper.OTHER_ADDON), (t.id, row.name, cell.column, target)
                else:
                    assert target.encoder in {"hcn", "agcn", "ctrgcn", "hyperformer", "blockgcn", "infogcn"}
                    assert target.benchmark in {"ntu60_xsub", "ntu60_xview", "ntu120_xsub", "ntu120_xset", "ucla"}
                    assert target.stream in {"joint", "bone", "2S", "4S"}
                    assert (target.source == "ensemble") == (target.stream in ("2S", "4S"))
                    head = row.name in ("CTR-GCN w/SkeletonGCL", "CTR-GCN w/FR Head")  # competitor heads, not CSRE
                    assert target.csre == (("w/" in row.name and "w/o" not in row.name and not head)
                                           or t.id == "table6_sampling")
                    assert (target.setting or "").startswith("head=") == head
    assert kinds["reported"] > 200 and kinds["lost"] > 50 and kinds["not_reported"] > 30
    # the check walks every cell of the real file without data without crashing
    report = paper.check([])
    assert report["exit_code"] == 0 and report["failures"] == 0
    assert set(report["summary"]) == {paper.V_NO_DATA, paper.V_LOST_UNTESTED}
    json.dumps(report, allow_nan=False)
    assert "table8_training_cost" in paper.format_markdown(report)


def test_typed_values_and_unplaced_numbers():
    tables = paper.load_tables()
    assert paper.paper_value("table1_ntu60", "CTR-GCN", "xsub_J", tables) == 89.8
    assert paper.paper_value("table1_ntu60", "BlockGCN", "xsub_B", tables) == "-"
    assert paper.paper_value("table1_ntu60", "CTR-GCN w/CSRE", "xsub_J", tables) is None
    assert paper.paper_value("table2_ntu120", "CTR-GCN w/CSRE", "xsub_2S", tables) == 89.3
    hcn = tables["table1_ntu60"].cell("HCN", "xsub_2S")
    assert (hcn.value, hcn.mark, hcn.raw, hcn.status) == (84.3, "*", "84.3*", "reported")
    assert tables["table6_sampling"].rows["H/R+H"].labels == {"positive": "H", "negative": "R+H"}
    # unplaced survivors stay apart: the row's cells are all lost
    block = tables["table1_ntu60"].rows["BlockGCN w/CSRE"]
    assert block.unplaced == (92.6, 95.4, 96.7)
    assert all(c.value is None for c in block.cells.values())
    assert tables["table2_ntu120"].rows["BlockGCN w/CSRE"].unplaced == (88.4, 89.6, 89.5, 91.0)
    assert tables["table3_nwucla"].rows["BlockGCN w/CSRE"].unplaced == (95.8, 97.0)
    report = paper.check([])
    t1 = next(t for t in report["tables"] if t["id"] == "table1_ntu60")
    assert t1["unplaced"] == [{"row": "BlockGCN w/CSRE", "values": [92.6, 95.4, 96.7],
                               "notes": block.notes}]
    assert "ST-GCN" in t1["not_ours"] and "CTR-GCN" not in t1["not_ours"]
    assert "Unplaced surviving values of `BlockGCN w/CSRE`" in paper.format_markdown(report)
    with pytest.raises(KeyError, match="no row"):
        paper.paper_value("table1_ntu60", "CTR-GCN w/XYZ", "xsub_J", tables)
    with pytest.raises(KeyError, match="no numeric column"):
        paper.paper_value("table6_sampling", "R/R", "positive", tables)
    with pytest.raises(KeyError, match="no paper table"):
        paper.paper_value("table9", "CTR-GCN", "acc", tables)


def test_explicit_mapping():
    T = paper.Target
    t = paper.target_of
    assert t("table1_ntu60", "CTR-GCN", "xview_B") == T("ntu60_xview", "ctrgcn", False, None, "run", "bone", "top1")
    assert t("table2_ntu120", "2S-AGCN w/CSRE", "xset_4S") == T("ntu120_xset", "agcn", True, "default", "ensemble",
                                                                "4S", "top1")
    assert t("table3_nwucla", "InfoGCN w/CSRE", "2S") == T("ucla", "infogcn", True, "default", "ensemble", "2S", "top1")
    assert t("table1_ntu60", "InfoGCN", "xsub_J").encoder == "infogcn"
    # HCN's 2S is one two-stream model: our single joint run
    hcn = t("table1_ntu60", "HCN w/CSRE", "xview_2S")
    assert (hcn.source, hcn.stream, hcn.benchmark, hcn.csre) == ("run", "joint", "ntu60_xview", True)
    assert t("table4_contrastive_methods", "Hyperformer w/CSRE", "acc").key == (
        "ntu120_xsub", "hyperformer", "joint", True, "default")
    assert t("table4_contrastive_methods", "CTR-GCN w/GAP", "acc") == paper.OTHER_ADDON
    assert t("table5_contrastive_strategy", "CTR-GCN (w/o contrast)", "acc").csre is False
    assert t("table5_contrastive_strategy", "CTR-GCN w/SC", "acc").setting == "variant=sc"
    assert t("table5_contrastive_strategy", "CTR-GCN w/CSRE + w/GC", "acc").setting == "variant=csre+gc"
    assert t("table6_sampling", "H/R+H", "acc").setting == "default"
    assert t("table6_sampling", "R/H", "acc").setting == "neg_strategy=H, pos_strategy=R"
    assert t("table7_difficulty_levels", "CTR-GCN w/CSRE", "hard").metric == "level:hard"
    assert t("table8_training_cost", "2S-AGCN", "memory_gb").metric == "memory_gb"
    assert t("table1_ntu60", "ST-GCN", "xsub_J") == paper.OTHER
    assert t("table1_ntu60", "NewNet", "xsub_J").startswith("unmapped row")
    assert t("table9", "CTR-GCN", "acc").startswith("unmapped table")


def test_odd_cells_are_kept_apart(tmp_path):
    doc = read_json(paper.PAPER_JSON)
    rows = doc["tables"]["table1_ntu60"]["rows"]
    rows["CTR-GCN"]["xsub_J"] = "n/a"
    rows["CTR-GCN"]["xsub_B"] = [90.2]
    del rows["CTR-GCN"]["xview_J"]
    rows["CTR-GCN"]["xsub_3S"] = 93.0
    rows["NewNet w/CSRE"] = {"xsub_J": 91.0, "xsub_B": True}
    rows["Hyperformer w/CSRE"]["_unplaced_surviving_values"] = [90.0, "x"]
    path = tmp_path / "tables.json"
    write_json(path, doc)
    tables = paper.load_tables(path)
    odd = {(o.row, o.column): o for o in tables["table1_ntu60"].odd}
    assert set(odd) == {("CTR-GCN", "xsub_J"), ("CTR-GCN", "xsub_B"), ("CTR-GCN", "xview_J"), ("CTR-GCN", "xsub_3S"),
                        ("NewNet w/CSRE", "xsub_B"), ("NewNet w/CSRE", "xsub_2S"),
                        ("Hyperformer w/CSRE", "_unplaced_surviving_values")} | {
        ("NewNet w/CSRE", c) for c in ("xsub_4S", "xview_J", "xview_B", "xview_2S", "xview_4S")}
    assert odd[("CTR-GCN", "xsub_J")].raw == "n/a"
    assert "xsub_J" not in tables["table1_ntu60"].rows["CTR-GCN"].cells
    assert tables["table1_ntu60"].rows["CTR-GCN"].cells["xsub_2S"].value == 92.0
    assert tables["table1_ntu60"].rows["Hyperformer w/CSRE"].unplaced == (90.0,)
    report = paper.check([], tables=tables)
    t1 = report["tables"][0]
    assert any(u["row"] == "NewNet w/CSRE" and u["reason"].startswith("unmapped row") for u in t1["unmapped"])
    assert len(t1["odd"]) == len(odd)
    md = paper.format_markdown(report)
    assert "Odd cell `CTR-GCN` / `xsub_J` = 'n/a'" in md
    with pytest.raises(ValueError, match="no 'tables'"):
        write_json(tmp_path / "bad.json", {"x": 1})
        paper.load_tables(tmp_path / "bad.json")


# --------------------------------------------------------------------------- single-stream verdicts

def test_paper_profile_pass_fail_and_ucla(tmp_path):
    # NTU120 X-Sub CTR-GCN joint: paper 84.9. Seeds at 84.8 and 85.0 -> mean 84.9: pass.
    passing = [make_run(tmp_path / "a", "ntu120_xsub", "ctrgcn", "joint", False, s, hits_with(k))
               for s, k in ((1, 848), (2, 850))]
    r = paper.check(passing)
    e = entry(r, "table2_ntu120", "CTR-GCN", "xsub_J")
    assert e["verdict"] == "pass" and e["comparable"] and not e["failed"]
    assert e["ours"]["mean"] == pytest.approx(84.9) and e["ours"]["n"] == 2 and e["ours"]["seeds"] == [1, 2]
    assert e["ours"]["std"] == pytest.approx(np.std([84.8, 85.0], ddof=1))
    assert e["delta"] == pytest.approx(0.0, abs=1e-9) and e["tolerance"] == 0.5
    # the same cell in Tables 4 and 5 (CTR-GCN baseline, NTU120 X-Sub joint)
    assert entry(r, "table4_contrastive_methods", "CTR-GCN", "acc")["verdict"] == "pass"
    assert entry(r, "table5_contrastive_strategy", "CTR-GCN (w/o contrast)", "acc")["verdict"] == "pass"
    assert r["exit_code"] == 0 and r["unplaced_runs"] == []

    # 0.6 pp off on NTU: fail, exit code 1
    failing = [make_run(tmp_path / "b", "ntu120_xsub", "ctrgcn", "joint", False, 1, hits_with(855))]
    r = paper.check(failing)
    e = entry(r, "table2_ntu120", "CTR-GCN", "xsub_J")
    assert e["delta"] == pytest.approx(0.6) and e["verdict"] == "fail" and e["failed"]
    assert r["exit_code"] == 1 and r["failures"] == 3  # Tables 2, 4 and 5 hold this cell
    assert "FAIL" in paper.format_markdown(r)
    # a wider tolerance passes it
    assert paper.check(failing, tol={"ntu": 0.7})["exit_code"] == 0

    # NW-UCLA CTR-GCN joint: paper 94.6; 95.5 is within 1.0 pp, 93.5 is not
    ucla_ok = [make_run(tmp_path / "c", "ucla", "ctrgcn", "joint", False, 1, hits_with(955))]
    e = entry(paper.check(ucla_ok), "table3_nwucla", "CTR-GCN", "J")
    assert (e["verdict"], e["tolerance"]) == ("pass", 1.0) and e["delta"] == pytest.approx(0.9)
    ucla_bad = [make_run(tmp_path / "d", "ucla", "ctrgcn", "joint", False, 1, hits_with(935))]
    assert entry(paper.check(ucla_bad), "table3_nwucla", "CTR-GCN", "J")["verdict"] == "fail"
    assert entry(paper.check(ucla_bad, tol=paper.Tolerance(ucla=1.2)), "table3_nwucla", "CTR-GCN", "J")[
        "verdict"] == "pass"


def test_other_profiles_are_not_compared(tmp_path):
    runs = [make_run(tmp_path, "ntu60_xsub", "ctrgcn", "joint", False, 1, hits_with(500), profile="quick"),
            make_run(tmp_path, "ntu60_xsub", "ctrgcn", "joint", False, 1, hits_with(898), profile="paper"),
            make_run(tmp_path, "ntu60_xsub", "ctrgcn", "joint", False, 2, hits_with(100), profile="ci")]
    r = paper.check(runs)
    found = entries(r, "table1_ntu60", "CTR-GCN", "xsub_J")
    assert [e["profile"] for e in found] == ["paper", "ci", "quick"]  # paper first
    by = {e["profile"]: e for e in found}
    assert by["paper"]["verdict"] == "pass"
    assert by["quick"]["verdict"] == "not comparable (profile quick)" and not by["quick"]["comparable"]
    assert by["ci"]["verdict"] == "not comparable (profile ci)" and not by["ci"]["failed"]
    assert by["quick"]["ours"]["mean"] == pytest.approx(50.0)
    assert r["exit_code"] == 0
    only_quick = paper.check(runs[:1])
    assert [e["verdict"] for e in entries(only_quick, "table1_ntu60", "CTR-GCN", "xsub_J")] == [
        "not comparable (profile quick)"]
    assert only_quick["exit_code"] == 0


def test_run_discovery_skips_and_duplicates(tmp_path):
    make_run(tmp_path / "runs", "ucla", "ctrgcn", "joint", False, 1, hits_with(946))
    make_run(tmp_path / "runs", "ucla", "ctrgcn", "bone", False, 1, hits_with(946), finished=False)
    make_run(tmp_path / "runs", "ucla", "ctrgcn", "joint_motion", False, 1, hits_with(946))  # a 4S member
    make_run(tmp_path / "runs", "ucla", "hcn", "joint", False, 1, hits_with(946))  # HCN is not in Table 3
    r = paper.check([tmp_path / "runs"])  # a folder is searched for run directories
    assert r["runs"]["used"] == 3 and len(r["runs"]["skipped"]) == 1
    assert "unfinished" in r["runs"]["skipped"][0]["reason"]
    assert entry(r, "table3_nwucla", "CTR-GCN", "J")["verdict"] == "pass"
    assert entry(r, "table3_nwucla", "CTR-GCN", "B", None)["verdict"] == "no-data"
    assert [(u["cell"]["encoder"], u["cell"]["stream"]) for u in r["unplaced_runs"]] == [("hcn", "joint")]
    twin = make_run(tmp_path / "twin", "ucla", "ctrgcn", "joint", False, 1, hits_with(900))
    with pytest.raises(ValueError, match="seed 1"):
        paper.check([tmp_path / "runs", twin])
    with pytest.raises(FileNotFoundError):
        paper.check([tmp_path / "nothing"])


def test_a_shortened_profiles_own_bindings_are_not_another_setting(tmp_path):
    """A quick-profile CSRE run binds the profile's smaller K: that is its profile, not a CSRE setting;
    a K of its own is still one."""
    quick = paper.profile_bindings("quick")
    assert quick["K_pos"] == 64 and quick["K_hard"] == 256 and paper.profile_bindings("paper") == {}
    ks = "\n".join(f"models.CSRE.{k} = {v}" for k, v in sorted(quick.items()))
    run = make_run(tmp_path, "ucla", "ctrgcn", "joint", True, 1, hits_with(10), profile="quick", config=ks)
    label, source = paper.read_setting(run, True)
    assert label == "default" and "quick profile's K_hard, K_pos, K_rand set aside" in source
    own = make_run(tmp_path, "ucla", "ctrgcn", "joint", True, 2, hits_with(10), profile="quick",
                   config=ks + "\nmodels.CSRE.K_pos = 32")
    assert paper.read_setting(own, True)[0] == "K_pos=32"
    same = make_run(tmp_path, "ucla", "ctrgcn", "joint", True, 3, hits_with(10), profile="paper", config=ks)
    assert paper.read_setting(same, True)[0] == "K_hard=256, K_pos=64, K_rand=256"  # paper runs: a real setting


def test_default_setting_is_gin_csre_gin():
    """The checker's default CSRE setting (what an unbound CSRE argument means in a run's config.gin,
    and the tau the matrix's temperature grid keeps) is the one gin/csre.gin binds."""
    from gin import config, config_parser
    text = (REPO / "gin" / "csre.gin").read_text()
    bound = {s.arg_name: s.value for s in config_parser.ConfigParser(text, config.ParserDelegate(skip_unknown=True))
             if isinstance(s, config_parser.BindingStatement) and s.selector == "models.CSRE"}
    assert set(paper.DEFAULT_SETTING) <= set(bound)
    assert {k: bound[k] for k in paper.DEFAULT_SETTING} == {k: v for k, v in paper.DEFAULT_SETTING.items()}


def test_csre_settings_from_config_gin(tmp_path):
    assert paper.read_setting(tmp_path, False) == (None, "baseline")
    assert paper.read_setting(tmp_path, True)[0] == "default"
    write_text(tmp_path / "config.gin", "CSRE.tau = 0.8\nmodels.CSRE.weights = (0.5, 0.5)\nCSRE.variant = 'sc'\n")
    assert paper.read_setting(tmp_path, True)[0] == "variant=sc"
    write_text(tmp_path / "config.gin", "CSRE.gc_weight = 1.0\nCSRE.pos_strategy = 'H'\n")
    assert paper.read_setting(tmp_path, True)[0] == "default"  # gc_weight counts only for GC variants
    write_text(tmp_path / "config.gin", "CSRE.weights = (1.0, 1.0)\nCSRE.K_pos = %KPOS\n")
    assert paper.read_setting(tmp_path, True)[0] == "K_pos=<unresolved %KPOS>, weights=(1.0, 1.0)"

    base = make_run(tmp_path / "r", "ntu120_xsub", "ctrgcn", "joint", False, 1, hits_with(849))
    sc = make_run(tmp_path / "r", "ntu120_xsub", "ctrgcn", "joint", True, 1, hits_with(860),
                  config="models.CSRE.variant = 'sc'")
    rr = make_run(tmp_path / "r", "ntu120_xsub", "ctrgcn", "joint", True, 1, hits_with(851),
                  config="CSRE.pos_strategy = 'R'\nCSRE.neg_strategy = 'R'")
    tau = make_run(tmp_path / "r", "ntu120_xsub", "ctrgcn", "joint", True, 1, hits_with(851),
                   config="CSRE.tau = 0.5")
    r = paper.check([base, sc, rr, tau])
    e = entry(r, "table5_contrastive_strategy", "CTR-GCN w/SC", "acc")  # lost: the claim test
    assert e["verdict"] == paper.V_BETTER and e["delta"] == pytest.approx(1.1)
    assert entry(r, "table6_sampling", "R/R", "acc")["verdict"] == "pass"  # 85.1 vs 85.1
    # none of them is taken for the default CSRE cell
    assert entry(r, "table2_ntu120", "CTR-GCN w/CSRE", "xsub_J", None)["verdict"] == "no-data"
    assert [u["setting"] for u in r["unplaced_runs"]] == ["tau=0.5"]


# --------------------------------------------------------------------------- the claim test on lost cells

def claim_runs(root: Path, k_base: int, k_csre: int, *, benchmark="ntu120_xset", stream="joint", seeds=(1, 2)):
    """Baseline runs with the first k_base samples right; CSRE runs with the first k_csre (names shuffled)."""
    dirs = []
    for s in seeds:
        dirs.append(make_run(root, benchmark, "ctrgcn", stream, False, s, hits_with(k_base)))
        dirs.append(make_run(root, benchmark, "ctrgcn", stream, True, s, hits_with(k_csre), shuffle=True))
    return dirs


def test_lost_cell_claim_better_worse_identical(tmp_path):
    # NTU120 X-Set CTR-GCN w/CSRE joint is lost in the paper; its baseline is 86.7 (ours passes)
    better = paper.check(claim_runs(tmp_path / "b", 867, 917))
    e = entry(better, "table2_ntu120", "CTR-GCN w/CSRE", "xset_J")
    assert e["paper"]["status"] == "lost" and e["paper"]["value"] is None
    g = e["gain_vs_base"]
    assert g["paired_seeds"] == [1, 2] and g["n_samples"] == N and g["ci"][0] > 0
    assert e["delta"] == pytest.approx(5.0) and e["verdict"] == paper.V_BETTER
    assert e["ours"]["mean"] == pytest.approx(91.7)
    assert entry(better, "table2_ntu120", "CTR-GCN", "xset_J")["verdict"] == "pass"
    assert better["exit_code"] == 0

    worse = paper.check(claim_runs(tmp_path / "w", 867, 817))
    e = entry(worse, "table2_ntu120", "CTR-GCN w/CSRE", "xset_J")
    assert e["gain_vs_base"]["ci"][1] < 0 and e["verdict"] == paper.V_WORSE and e["failed"]
    assert worse["exit_code"] == 1 and worse["failures"] == 1

    same = paper.check(claim_runs(tmp_path / "s", 867, 867))
    e = entry(same, "table2_ntu120", "CTR-GCN w/CSRE", "xset_J")
    lo, hi = e["gain_vs_base"]["ci"]
    assert lo <= 0 <= hi and e["verdict"] == paper.V_NOT_WORSE and same["exit_code"] == 0

    # without a paired baseline seed: no-data
    lonely = [make_run(tmp_path / "l", "ntu120_xset", "ctrgcn", "joint", True, 3, hits_with(900)),
              make_run(tmp_path / "l", "ntu120_xset", "ctrgcn", "joint", False, 4, hits_with(850))]
    e = entry(paper.check(lonely), "table2_ntu120", "CTR-GCN w/CSRE", "xset_J")
    assert e["verdict"] == "no-data" and "no seed with both" in e["note"]


def test_reported_csre_cell_carries_the_gain_interval(tmp_path):
    # NTU120 X-Sub CTR-GCN w/CSRE joint: paper 85.6 (reported), baseline 84.9
    dirs = claim_runs(tmp_path, 849, 856, benchmark="ntu120_xsub", seeds=(1,))
    r = paper.check(dirs)
    e = entry(r, "table2_ntu120", "CTR-GCN w/CSRE", "xsub_J")
    assert e["verdict"] == "pass" and e["gain_vs_base"]["delta"] == pytest.approx(0.7)
    assert e["ours"]["std"] is None and e["ours"]["n"] == 1
    assert "gain vs our base, paper: +0.70" in paper.format_markdown(r)
    assert "gain vs our base, honest: +0.70" in paper.format_markdown(r)


# --------------------------------------------------------------------------- the two protocols

def test_paper_protocol_takes_the_best_test_epoch_and_honest_the_last(tmp_path):
    """NTU120 X-Sub CTR-GCN joint, paper 84.9: last epoch 84.0, best test epoch (6) 85.0. Like for
    like the best epoch passes; the honest number and the optimism stand beside it."""
    d = make_run(tmp_path, "ntu120_xsub", "ctrgcn", "joint", False, 1, hits_with(840), best_hits=hits_with(850),
                 best_epoch=6, val_top1=84.2)
    r = paper.check([d])
    e = entry(r, "table2_ntu120", "CTR-GCN", "xsub_J")
    assert e["ours"]["mean"] == pytest.approx(85.0) and e["protocols"]["paper"]["mean"] == pytest.approx(85.0)
    assert e["protocols"]["honest"]["mean"] == pytest.approx(84.0)
    assert e["optimism"] == pytest.approx(1.0) and e["delta"] == pytest.approx(0.1)
    assert e["delta_honest"] == pytest.approx(-0.9) and e["verdict"] == "pass"
    assert e["epochs"] == {"paper": {1: 6}, "honest": {1: 9}}
    assert e["best_on_val"]["mean"] == pytest.approx(84.2)  # a run with a held-out part: best-on-val as well
    md = paper.format_markdown(r)
    assert "| 84.9 | 85.00 (n=1) | +0.10 | 84.00 (n=1) | +1.00 | pass |" in md and "best epoch on val: 84.20" in md
    assert r["protocols"]["verdict"] == "paper"
    # a run without a best-epoch record has no paper-protocol number: no-data, not its last epoch
    m = json.loads((d / "metrics.json").read_text())
    del m["best_on_test"]
    write_json(d / "metrics.json", m)
    e = entry(paper.check([d]), "table2_ntu120", "CTR-GCN", "xsub_J")
    assert e["verdict"] == "no-data" and e["ours"] is None and e["protocols"]["honest"]["mean"] == pytest.approx(84.0)


def test_csre_gain_under_each_protocol(tmp_path):
    """Gains from each protocol's own score files: paper (best epochs) +1.0, honest (last epochs) +0.5,
    each the paired bootstrap of those hits; the claim on a lost cell is tested like for like."""
    base_last, base_best = hits_with(840), hits_with(850)
    csre_last, csre_best = hits_with(845), hits_with(860)
    dirs = [make_run(tmp_path, "ntu120_xset", "ctrgcn", "joint", False, 1, base_last, best_hits=base_best, best_epoch=5),
            make_run(tmp_path, "ntu120_xset", "ctrgcn", "joint", True, 1, csre_last, best_hits=csre_best, best_epoch=7,
                     shuffle=True)]
    e = entry(paper.check(dirs, resamples=300), "table2_ntu120", "CTR-GCN w/CSRE", "xset_J")  # a lost cell
    g = e["gains"]
    assert g["paper"]["delta"] == pytest.approx(1.0) and g["honest"]["delta"] == pytest.approx(0.5)
    for protocol, (c, b) in (("paper", (csre_best, base_best)), ("honest", (csre_last, base_last))):
        ref = paper.paired_bootstrap(c[None], b[None], resamples=300, confidence=0.95, seed=0)
        assert g[protocol]["ci"] == pytest.approx(ref["ci"]) and g[protocol]["protocol"] == protocol
    assert e["gain_vs_base"] == g["paper"] and e["delta"] == pytest.approx(1.0)
    assert e["optimism"] == pytest.approx(86.0 - 84.5)
    assert "gain vs our base, paper: +1.00" in paper.format_markdown(paper.check(dirs, resamples=300))


def test_paper_protocol_ensembles_tune_best_epoch_scores_on_test(tmp_path):
    """The paper protocol's 2S number is the official search tuned on the best-epoch files; the
    honest one uses the published weights on the last epochs."""
    from harness.ensemble import tune_weights
    dirs = [make_run(tmp_path, "ntu120_xset", "ctrgcn", "joint", False, 1, hits_with(850), best_hits=hits_with(870)),
            make_run(tmp_path, "ntu120_xset", "ctrgcn", "bone", False, 1, hits_with(860, offset=100),
                     best_hits=hits_with(865, offset=300))]
    report = ensemble_report(dirs, n_calls=10)
    ws = report["groups"][0]["ensembles"]["2S"]["weight_sets"]
    best = [load_scores(d / "scores_test_best.npz") for d in dirs]
    t = tune_weights(np.stack([b.logits for b in best]), best[0].labels, n_calls=10)
    assert ws["paper"]["weights"] == list(t.weights) and ws["paper"]["test"]["top1"] == pytest.approx(100 * t.top1)
    from harness.ensemble import format_markdown as ensemble_markdown
    assert "best test epochs joint 9, bone 9 (0-based), tuned on the test set itself" in ensemble_markdown(report)
    e = entry(paper.check(dirs, ensembles=report), "table2_ntu120", "CTR-GCN", "xset_2S")
    assert e["ours"]["mean"] == pytest.approx(ws["paper"]["test"]["top1"])
    assert e["protocols"]["honest"]["mean"] == pytest.approx(ws["published"]["test"]["top1"])
    assert e["optimism"] == pytest.approx(ws["paper"]["test"]["top1"] - ws["published"]["test"]["top1"])


def test_paper_protocol_selects_the_temperature_on_test(tmp_path):
    """With the temperature grid (--tau-grid) the paper protocol takes, per seed, the CSRE run of best
    best-epoch test top-1 among tau 0.8 (the default cell), 0.5 and 1.0; the honest protocol keeps 0.8."""
    base = make_run(tmp_path, "ntu120_xsub", "ctrgcn", "joint", False, 1, hits_with(849))
    default = make_run(tmp_path, "ntu120_xsub", "ctrgcn", "joint", True, 1, hits_with(845), best_hits=hits_with(850))
    grid = [make_run(tmp_path, "ntu120_xsub", "ctrgcn", "joint", True, 1, hits_with(840), best_hits=hits_with(k),
                     config=f"CSRE.tau = {tau}") for tau, k in ((0.5, 860), (1.0, 848))]
    r = paper.check([base, default, *grid], resamples=200)
    e = entry(r, "table2_ntu120", "CTR-GCN w/CSRE", "xsub_J")
    assert e["tau_selection"] == {1: "tau=0.5"} and e["ours"]["mean"] == pytest.approx(86.0)
    assert e["protocols"]["honest"]["mean"] == pytest.approx(84.5) and e["optimism"] == pytest.approx(1.5)
    assert e["gains"]["paper"]["delta"] == pytest.approx(86.0 - 84.9)  # the selected run's best-epoch scores
    assert e["gains"]["honest"]["delta"] == pytest.approx(84.5 - 84.9)
    assert r["unplaced_runs"] == []  # the grid runs belong to the default cell
    # ties keep the released code's 0.8
    tie = make_run(tmp_path / "tie", "ntu120_xsub", "ctrgcn", "joint", True, 1, hits_with(840),
                   best_hits=hits_with(850), config="CSRE.tau = 1.0")
    e = entry(paper.check([base, default, tie]), "table2_ntu120", "CTR-GCN w/CSRE", "xsub_J")
    assert e["tau_selection"] == {1: "default"} and e["ours"]["mean"] == pytest.approx(85.0)


def test_mismatched_test_sets_cannot_be_paired(tmp_path):
    dirs = [make_run(tmp_path, "ntu120_xset", "ctrgcn", "joint", False, 1, hits_with(850)),
            make_run(tmp_path, "ntu120_xset", "ctrgcn", "joint", True, 1, hits_with(800, n=800))]
    e = entry(paper.check(dirs), "table2_ntu120", "CTR-GCN w/CSRE", "xset_J")
    assert e["verdict"] == "no-data" and "cannot pair" in e["note"]


# --------------------------------------------------------------------------- the bootstrap itself

def test_bootstrap_hand_built_cases():
    base = np.array([hits_with(60, 100), hits_with(60, 100, offset=3)])  # 2 seeds x 100 samples
    better = np.array([hits_with(80, 100), hits_with(80, 100, offset=3)])
    r = paper.paired_bootstrap(better, base, resamples=500, seed=1)
    assert r["delta"] == pytest.approx(20.0) and r["ci"][0] > 0 and r["n_seeds"] == 2
    assert paper.claim_verdict(r["ci"]) == paper.V_BETTER
    r = paper.paired_bootstrap(base, better, resamples=500, seed=1)
    assert r["ci"][1] < 0 and paper.claim_verdict(r["ci"]) == paper.V_WORSE
    r = paper.paired_bootstrap(base, base, resamples=500, seed=1)
    assert r["ci"] == [0.0, 0.0] and paper.claim_verdict(r["ci"]) == paper.V_NOT_WORSE
    # equal accuracies, different samples right: the interval straddles 0
    swapped = np.array([hits_with(60, 100, offset=20), hits_with(60, 100, offset=23)])
    r = paper.paired_bootstrap(swapped, base, resamples=500, seed=1)
    assert r["delta"] == pytest.approx(0.0) and r["ci"][0] < 0 < r["ci"][1]
    # one seed given as 1-D arrays
    assert paper.paired_bootstrap(better[0], base[0], resamples=50)["n_seeds"] == 1
    with pytest.raises(ValueError):
        paper.paired_bootstrap(better, base[:1])
    with pytest.raises(ValueError):
        paper.paired_bootstrap(better, base, confidence=1.0)


def test_bootstrap_is_deterministic_in_its_seed():
    rng = np.random.default_rng(3)
    a, b = rng.random((3, 200)) < 0.7, rng.random((3, 200)) < 0.65
    r1 = paper.paired_bootstrap(a, b, resamples=300, seed=5)
    assert paper.paired_bootstrap(a, b, resamples=300, seed=5) == r1
    assert paper.paired_bootstrap(a, b, resamples=300, seed=5, chunk=7) == r1  # chunking draws the same stream
    assert paper.paired_bootstrap(a, b, resamples=300, seed=6)["ci"] != r1["ci"]


def test_vectorised_bootstrap_equals_the_readable_loop():
    rng = np.random.default_rng(11)
    a, b = rng.random((2, 40)) < 0.6, rng.random((2, 40)) < 0.5
    fast = paper.paired_bootstrap(a, b, resamples=150, confidence=0.9, seed=4)
    slow = paper.paired_bootstrap_reference(a, b, resamples=150, confidence=0.9, seed=4)
    assert fast["delta"] == pytest.approx(slow["delta"], abs=1e-9)
    np.testing.assert_allclose(fast["ci"], slow["ci"], atol=1e-9)
    assert {k: fast[k] for k in ("resamples", "n_samples", "n_seeds", "seed")} == {
        k: slow[k] for k in ("resamples", "n_samples", "n_seeds", "seed")}


# --------------------------------------------------------------------------- ensembles, levels, cost

def test_ensembles_from_the_report(tmp_path):
    dirs = []
    for csre, (kj, kb) in ((False, (850, 860)), (True, (870, 880))):
        for s in (1, 2):
            dirs.append(make_run(tmp_path, "ntu120_xset", "ctrgcn", "joint", csre, s, hits_with(kj)))
            dirs.append(make_run(tmp_path, "ntu120_xset", "ctrgcn", "bone", csre, s, hits_with(kb, offset=100)))
    report = ensemble_report(dirs, n_calls=10)
    path = tmp_path / "ens.json"
    write_json(path, report)
    published = [g["ensembles"]["2S"]["weight_sets"]["published"]["test"]["top1"] for g in report["groups"]
                 if not g["csre"]]
    tuned = [g["ensembles"]["2S"]["weight_sets"]["test_tuned"]["test"]["top1"] for g in report["groups"]
             if not g["csre"]]

    paper_set = [g["ensembles"]["2S"]["weight_sets"]["paper"]["test"]["top1"] for g in report["groups"]
                 if not g["csre"]]
    r = paper.check(dirs, ensembles=path)
    # by default the verdict is the paper protocol's: best-epoch scores, weights tuned on test
    e = entry(r, "table2_ntu120", "CTR-GCN", "xset_2S")
    assert e["compared_weight_set"] == "paper" and e["ours"]["mean"] == pytest.approx(np.mean(paper_set))
    assert e["protocols"]["honest"]["mean"] == pytest.approx(np.mean(published)) and e["honest_weights"] == "published"
    assert e["optimism"] == pytest.approx(np.mean(paper_set) - np.mean(published))
    r = paper.check(dirs, ensembles=path, ensemble_weights="published")
    e = entry(r, "table2_ntu120", "CTR-GCN", "xset_2S")  # paper 90.1
    assert e["compared_weight_set"] == "published"
    assert e["ours"]["mean"] == pytest.approx(np.mean(published))
    assert e["weight_sets"]["test_tuned"]["mean"] == pytest.approx(np.mean(tuned))
    assert e["weight_sets"]["val"] is None  # no scores_val.npz: unavailable, not faked
    assert e["delta"] == pytest.approx(np.mean(published) - 90.1)
    assert e["verdict"] == ("pass" if abs(e["delta"]) <= 0.5 else "fail")
    assert "test-tuned (optimistic)" in paper.format_markdown(r)
    assert e["setting_source"] == ["baseline"]
    assert entry(r, "table2_ntu120", "CTR-GCN", "xset_4S", None)["verdict"] == "no-data"  # unavailable in the report
    assert entry(r, "table2_ntu120", "CTR-GCN w/CSRE", "xset_2S")["setting_source"] == [
        "assumed default (no config.gin in the member run directories)"]
    # the verdict can use another weight set
    e2 = entry(paper.check(dirs, ensembles=report, ensemble_weights="test_tuned"), "table2_ntu120", "CTR-GCN",
               "xset_2S")
    assert e2["ours"]["mean"] == pytest.approx(np.mean(tuned))
    # a looser ensemble tolerance applies to ensembles only
    e3 = entry(paper.check(dirs, ensembles=report, tol={"ensemble": 100.0}), "table2_ntu120", "CTR-GCN", "xset_2S")
    assert e3["verdict"] == "pass" and e3["tolerance"] == 100.0

    # the lost 2S w/CSRE cell: tested on published-weight ensembles of the runs (J + B)
    e = entry(r, "table2_ntu120", "CTR-GCN w/CSRE", "xset_2S")
    assert e["paper"]["status"] == "lost" and e["gain_vs_base"]["weights"] == "published"
    assert e["gain_vs_base"]["paired_seeds"] == [1, 2]
    csre_pub = [g["ensembles"]["2S"]["weight_sets"]["published"]["test"]["top1"] for g in report["groups"]
                if g["csre"]]
    assert e["delta"] == pytest.approx(np.mean(csre_pub) - np.mean(published))
    assert e["verdict"] in (paper.V_BETTER, paper.V_NOT_WORSE)
    # without the report: ensemble numbers are no-data, the claim test still runs from the run dirs
    r = paper.check(dirs)
    assert entry(r, "table2_ntu120", "CTR-GCN", "xset_2S", None)["verdict"] == "no-data"
    assert entry(r, "table2_ntu120", "CTR-GCN w/CSRE", "xset_2S")["verdict"] == e["verdict"]
    # 4S needs all four streams
    assert entry(r, "table2_ntu120", "CTR-GCN w/CSRE", "xset_4S", None)["verdict"] == "no-data"
    with pytest.raises(ValueError, match="not an ensemble report"):
        paper.check(dirs, ensembles={"x": 1})
    # an ensemble of non-default CSRE runs (config.gin of its members) is not the paper's CSRE cell
    tau = [make_run(tmp_path / "tau", "ntu120_xset", "ctrgcn", st, True, 1, hits_with(900), config="CSRE.tau = 0.5")
           for st in ("joint", "bone")]
    r = paper.check(tau, ensembles=ensemble_report(tau, n_calls=5))
    assert entry(r, "table2_ntu120", "CTR-GCN w/CSRE", "xset_2S", None)["verdict"] == "no-data"
    assert {u["setting"] for u in r["unplaced_runs"]} == {"tau=0.5"}


def test_difficulty_levels_and_cost(tmp_path):
    # Table 7 CTR-GCN: hard 65.9, medium 85.8, easy 95.4 (class means of the run's own levels)
    levels = {"per_class": [60.0, 71.8, 85.8, 95.4, None], "levels": {"hard": [0, 1], "medium": [2], "easy": [3]}}
    base = make_run(tmp_path, "ntu120_xsub", "ctrgcn", "joint", False, 1, hits_with(849), per_class=levels,
                    cost={"seconds_per_epoch": 600.0, "peak_memory_mb": 4096.0})
    csre = make_run(tmp_path, "ntu120_xsub", "ctrgcn", "joint", True, 1, hits_with(856),
                    per_class={"per_class": [70.0, 70.0, 90.0, 96.0, None],
                               "levels": {"hard": [0, 1], "medium": [], "easy": [2, 3]}},
                    cost={"seconds_per_epoch": 900.0, "peak_memory_mb": 4300.0})
    r = paper.check([base, csre])
    e = entry(r, "table7_difficulty_levels", "CTR-GCN", "hard")
    assert e["ours"]["mean"] == pytest.approx(65.9) and e["verdict"] == "pass"
    assert entry(r, "table7_difficulty_levels", "CTR-GCN", "easy")["verdict"] == "pass"
    e = entry(r, "table7_difficulty_levels", "CTR-GCN w/CSRE", "hard")
    assert e["verdict"] == paper.V_LOST_UNTESTED and e["delta_vs_base"] == pytest.approx(70.0 - 65.9)
    assert entry(r, "table7_difficulty_levels", "CTR-GCN w/CSRE", "medium")["ours"] is None  # no medium class
    assert entry(r, "table7_difficulty_levels", "CTR-GCN", "hard")["tolerance"] == 0.5
    assert entry(paper.check([base], tol={"levels": 2.0}), "table7_difficulty_levels", "CTR-GCN", "hard")[
        "tolerance"] == 2.0
    # Table 8: informational only, never a failure
    e = entry(r, "table8_training_cost", "CTR-GCN w/CSRE", "time_min_per_epoch")
    assert e["verdict"] == paper.V_INFO and not e["failed"] and e["ours"]["mean"] == pytest.approx(15.0)
    assert e["ratio_vs_base"] == pytest.approx(1.5) and e["paper_ratio_vs_base"] == pytest.approx(23.5 / 19.9)
    assert entry(r, "table8_training_cost", "CTR-GCN", "memory_gb")["ours"]["mean"] == pytest.approx(4.0)
    assert r["exit_code"] == 0


def test_hcn_two_stream_cell_uses_the_joint_run(tmp_path):
    dirs = [make_run(tmp_path, "ntu60_xsub", "hcn", "joint", False, 1, hits_with(843)),
            make_run(tmp_path, "ntu60_xsub", "hcn", "joint", True, 1, hits_with(850))]
    r = paper.check(dirs)
    e = entry(r, "table1_ntu60", "HCN", "xsub_2S")
    assert e["verdict"] == "pass" and e["paper"]["raw"] == "84.3*" and "HCN" in e["note"]
    assert entry(r, "table1_ntu60", "HCN w/CSRE", "xsub_2S")["verdict"] == paper.V_BETTER


# --------------------------------------------------------------------------- the verb

def parse(argv):
    p = argparse.ArgumentParser()
    paper.configure_parser(p)
    return p.parse_args(argv)


def test_verb_exit_codes_and_outputs(tmp_path, capsys):
    ok = make_run(tmp_path / "ok", "ucla", "ctrgcn", "joint", False, 1, hits_with(950))
    out_json, out_md = tmp_path / "o" / "check.json", tmp_path / "o" / "check.md"
    args = parse([str(ok), "--json", str(out_json), "--markdown", str(out_md), "--only-data", "--resamples", "100"])
    assert (args.tol_ntu, args.tol_ucla, args.ensemble_weights) == (0.5, 1.0, "paper")
    assert paper.run(args) == 0
    printed = capsys.readouterr().out
    assert "OK: no comparable cell fails (1 pass, " in printed
    assert "| CTR-GCN | J | ucla ctrgcn joint base | paper | 94.6 | 95.00 (n=1) | +0.40 | 95.00 (n=1) | +0.00 | pass |" in printed
    assert "InfoGCN" not in out_md.read_text().split("## table3_nwucla")[1].split("##")[0].split("Other methods")[0]
    report = json.loads(out_json.read_text())
    assert report["exit_code"] == 0 and report["bootstrap"]["resamples"] == 100
    assert out_md.read_text() in printed

    assert paper.run(parse([str(ok), "--tol-ucla", "0.3"])) == 1
    assert "FAIL: 1 comparable cell(s)" in capsys.readouterr().out
    with pytest.raises(ValueError):
        paper.run(parse([str(ok), "--resamples", "0"]))


def test_competitor_head_runs_fill_their_table4_rows(tmp_path):
    """A SkeletonGCL / FR-Head run (cell 'head') is its own Table 4 row, never the baseline's."""
    n = 1000
    base = make_run(tmp_path, "ntu120_xsub", "ctrgcn", "joint", False, 1, hits_with(849, n))
    runs = [base]
    for head, k in (("skeletongcl", 856), ("frhead", 850)):
        d = make_run(tmp_path / head, "ntu120_xsub", "ctrgcn", "joint", False, 1, hits_with(k, n))
        m = json.loads((d / "metrics.json").read_text())
        m["cell"].update(head=head, arm=head)
        write_json(d / "metrics.json", m)
        runs.append(d)
    report = paper.check(runs)
    assert entry(report, "table4_contrastive_methods", "CTR-GCN", "acc")["ours"]["mean"] == pytest.approx(84.9)
    sgcl = entry(report, "table4_contrastive_methods", "CTR-GCN w/SkeletonGCL", "acc")
    assert sgcl["ours"]["mean"] == pytest.approx(85.6) and sgcl["verdict"] == "pass"
    fr = entry(report, "table4_contrastive_methods", "CTR-GCN w/FR Head", "acc")
    assert fr["ours"]["mean"] == pytest.approx(85.0) and fr["verdict"] == "pass"  # 85.0 vs 85.5: within 0.5 pp
