import json

import numpy as np
import pandas as pd
import pytest

from neft.masks import (
    MaskError,
    ModelShape,
    build_mask,
    build_mask_with_ties,
    cutoff_ties,
    load_mask,
    mask_from_json,
    mask_to_json,
    neurons_for_ratio,
    save_mask,
    select_lowest_neurons,
    summarize_mask,
    validate_mask,
)

SHAPE = ModelShape(num_layers=3, d_model=16, d_ff=10, total_parameters=16_000)


def fake_scores(seed: int = 0, ties: bool = False) -> pd.DataFrame:
    """60 neurons (3 layers x in/out x 10); with `ties`, the change takes only 11 values."""
    rng = np.random.default_rng(seed)
    rows = [(layer, kind, index) for layer in range(3) for kind in ("in", "out") for index in range(10)]
    frame = pd.DataFrame(rows, columns=["layer", "kind", "index"])
    frame["change"] = np.round(rng.uniform(0.0, 0.01, len(frame)), 3 if ties else 10)
    frame["cosine"] = 1.0 - frame["change"]
    return frame


def selected_set(mask) -> set[tuple[str, int, int]]:
    return {(kind, layer, i) for kind, per_layer in mask.indices.items() for layer, ids in per_layer.items() for i in ids}


# k = ratio x 16,000 parameters / 16 per neuron, written out: none of these takes the whole pool of 60.
@pytest.mark.parametrize(("ratio", "k"), [(0.001, 1), (0.013, 13), (0.03, 30), (0.059, 59)])
def test_mask_has_exactly_k_neurons_with_the_largest_changes(ratio, k):
    scores = fake_scores()
    mask = build_mask(scores, SHAPE, ratio)
    assert mask.num_neurons == k
    selected = selected_set(mask)
    chosen = [c for layer, kd, i, c in scores[["layer", "kind", "index", "change"]].itertuples(index=False) if (kd, layer, i) in selected]
    rest = [c for layer, kd, i, c in scores[["layer", "kind", "index", "change"]].itertuples(index=False) if (kd, layer, i) not in selected]
    assert len(rest) == 60 - k > 0
    assert min(chosen) > max(rest)
    expected = scores.nlargest(k, "change")
    assert selected == {(kd, layer, i) for layer, kd, i in expected[["layer", "kind", "index"]].itertuples(index=False)}


def test_ties_are_broken_deterministically_by_position():
    scores = fake_scores(ties=True)
    k = 7
    key = -scores["change"].to_numpy()
    first = select_lowest_neurons(scores, k, key)
    shuffled_scores = scores.sample(frac=1.0, random_state=3).reset_index(drop=True)
    shuffled = select_lowest_neurons(shuffled_scores, k, -shuffled_scores["change"].to_numpy())
    assert len(first) == k
    position = ["layer", "kind", "index"]
    pd.testing.assert_frame_equal(first[position].reset_index(drop=True), shuffled[position].reset_index(drop=True))
    boundary = first["change"].min()
    tied_left_out = scores[(scores["change"] == boundary)].merge(first[position], how="left", indicator=True)
    tied_left_out = tied_left_out[tied_left_out["_merge"] == "left_only"]
    assert len(tied_left_out) > 0, "the fixture must tie across the cutoff"
    last_kept = first[first["change"] == boundary][position].values.tolist()[-1]
    assert all(tuple(row) > tuple(last_kept) for row in tied_left_out[position].values.tolist()), "ties must go to the earlier neuron"


def test_cutoff_ties_count_what_position_decided():
    # keys 0 1 2 2 2 3: k=3 takes 0, 1 and one of three 2s: the tie-break chose 1 neuron of 3 tied.
    key = np.array([2.0, 0.0, 2.0, 3.0, 1.0, 2.0])
    assert cutoff_ties(key, 3) == cutoff_ties(key[::-1].copy(), 3)
    ties = cutoff_ties(key, 3)
    assert (ties.cutoff_key, ties.tied_at_cutoff, ties.decided_by_tiebreak) == (2.0, 3, 1)
    assert cutoff_ties(key, 5).decided_by_tiebreak == 0  # the whole tied group fits: no choice made
    assert cutoff_ties(key, 2) == type(ties)(1.0, 1, 0)


def test_mask_with_ties_reports_them():
    _, tied = build_mask_with_ties(fake_scores(ties=True), SHAPE, 0.007)
    _, resolved = build_mask_with_ties(fake_scores(), SHAPE, 0.007)
    assert tied.decided_by_tiebreak > 0 and tied.tied_at_cutoff > tied.decided_by_tiebreak
    assert (resolved.tied_at_cutoff, resolved.decided_by_tiebreak) == (1, 0)


@pytest.mark.parametrize("ratio", [0, -0.1, 1.0, 1.5])
def test_ratio_out_of_range_is_rejected(ratio):
    with pytest.raises(MaskError, match="ratio must be in"):
        neurons_for_ratio(ratio, SHAPE, pool_size=60)


def test_ratio_larger_than_pool_names_the_largest_possible_ratio():
    with pytest.raises(MaskError, match=r"pool has only 60 \(largest possible ratio with these neuron kinds: 0\.0600\)"):
        neurons_for_ratio(0.5, SHAPE, pool_size=60)


def test_ratio_too_small_for_one_neuron_is_rejected():
    with pytest.raises(MaskError, match="selects no neuron"):
        neurons_for_ratio(0.0001, SHAPE, pool_size=60)


def test_mask_file_round_trips(tmp_path):
    mask = build_mask(fake_scores(), SHAPE, 0.05)
    save_mask(mask, tmp_path / "mask.json")
    loaded = load_mask(tmp_path / "mask.json")
    assert loaded.indices == mask.indices and loaded.shape == mask.shape and loaded.ratio == mask.ratio


def test_mask_for_another_model_is_rejected():
    mask = build_mask(fake_scores(), SHAPE, 0.05)
    other = ModelShape(num_layers=4, d_model=16, d_ff=10, total_parameters=20_000)
    with pytest.raises(MaskError, match="mask was made for"):
        validate_mask(mask, other)


def test_corrupt_mask_files_are_rejected(tmp_path):
    data = mask_to_json(build_mask(fake_scores(), SHAPE, 0.05))
    data["num_neurons"] += 1
    with pytest.raises(MaskError, match="says"):
        mask_from_json(data)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MaskError, match="cannot read mask"):
        load_mask(tmp_path / "bad.json")
    out_of_range = mask_from_json(mask_to_json(build_mask(fake_scores(), SHAPE, 0.05)))
    out_of_range.indices["in"][0] = [0, 10]
    with pytest.raises(MaskError, match="out of range"):
        validate_mask(out_of_range, SHAPE)


def test_summary_counts_per_layer_and_kind_add_up():
    mask = build_mask(fake_scores(), SHAPE, 0.06)
    summary = summarize_mask(mask)
    assert summary["num_neurons"] == 60 == sum(summary["neurons_per_kind"].values())
    assert sum(sum(counts) for counts in summary["neurons_per_layer"].values()) == 60
    assert summary["trainable_parameters"] == 60 * 16
    assert summary["trainable_percent"] == pytest.approx(6.0)


def test_reversed_control_keeps_the_smallest_changes():
    scores = fake_scores()
    mask = build_mask(scores, SHAPE, 0.03, strategy="reversed")
    assert mask.num_neurons == 30
    expected = scores.nsmallest(30, "change")
    assert selected_set(mask) == {(kd, layer, i) for layer, kd, i in expected[["layer", "kind", "index"]].itertuples(index=False)}
    assert mask.strategy == "reversed"


def test_random_control_is_reproducible_by_seed_and_ignores_scores():
    scores = fake_scores()
    same = build_mask(scores, SHAPE, 0.03, strategy="random", seed=7)
    again = build_mask(fake_scores(seed=99), SHAPE, 0.03, strategy="random", seed=7)
    other = build_mask(scores, SHAPE, 0.03, strategy="random", seed=8)
    assert same.indices == again.indices  # the draw does not look at the scores
    assert same.indices != other.indices
    assert same.num_neurons == other.num_neurons == build_mask(scores, SHAPE, 0.03).num_neurons


def test_unknown_strategy_is_rejected():
    with pytest.raises(MaskError, match="unknown mask strategy 'magnitude'"):
        build_mask(fake_scores(), SHAPE, 0.03, strategy="magnitude")


@pytest.mark.parametrize(("change", "message"), [
    (lambda data: data["indices"]["in"].__setitem__("0", [1, 7.9]), r"'indices.in.0'\[1\] = 7.9 must be an integer neuron index"),
    (lambda data: data["indices"]["in"].__setitem__("0", [True]), r"'indices.in.0'\[0\] = True must be an integer"),
    (lambda data: data["indices"]["in"].__setitem__("0", "1, 2"), r"'indices.in.0' must be a list of neuron indices"),
    (lambda data: data["indices"]["in"].__setitem__("x", [1]), r"'indices.in' layer 'x' must be a layer number"),
    (lambda data: data.__setitem__("indices", [[1, 2]]), r"'indices' must be an object"),
    (lambda data: data.pop("model"), r"key 'model' is missing"),
    (lambda data: data["model"].pop("d_ff"), r"'model' must be an object with exactly the keys"),
    (lambda data: data.__setitem__("ratio", "0.05"), r"'ratio' = '0.05' must be a number"),
])
def test_a_structurally_broken_mask_names_the_file_and_key(tmp_path, change, message):
    data = mask_to_json(build_mask(fake_scores(), SHAPE, 0.05))
    data["indices"]["in"] = {"0": [1], **data["indices"]["in"]}
    data["num_neurons"] = sum(len(ids) for per_layer in data["indices"].values() for ids in per_layer.values())
    change(data)
    (tmp_path / "mask.json").write_text(json.dumps(data))
    with pytest.raises(MaskError, match=rf"^{tmp_path}/mask.json: .*{message}.*; rerun the mask stage"):
        load_mask(tmp_path / "mask.json")


def test_a_mask_that_is_a_list_names_the_file(tmp_path):
    (tmp_path / "mask.json").write_text("[]")
    with pytest.raises(MaskError, match=r"mask.json: expected a JSON object, got a list"):
        load_mask(tmp_path / "mask.json")
