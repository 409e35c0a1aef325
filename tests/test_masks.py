import numpy as np
import pandas as pd
import pytest

from neft.masks import (
    MaskError,
    ModelShape,
    build_mask,
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
    rng = np.random.default_rng(seed)
    rows = [(layer, kind, index) for layer in range(3) for kind in ("in", "out") for index in range(10)]
    frame = pd.DataFrame(rows, columns=["layer", "kind", "index"])
    frame["score"] = np.round(rng.uniform(0.99, 1.0, len(frame)), 2 if ties else 8)
    return frame


@pytest.mark.parametrize("ratio", [0.001, 0.03, 0.05, 0.06])
def test_mask_has_exactly_k_neurons_with_the_lowest_scores(ratio):
    scores = fake_scores()
    mask = build_mask(scores, SHAPE, ratio)
    k = round(ratio * SHAPE.total_parameters / SHAPE.d_model)
    assert mask.num_neurons == k
    selected = {(kind, layer, i) for kind, per_layer in mask.indices.items() for layer, ids in per_layer.items() for i in ids}
    chosen_scores = [s for l, kd, i, s in scores.itertuples(index=False) if (kd, l, i) in selected]
    rest = [s for l, kd, i, s in scores.itertuples(index=False) if (kd, l, i) not in selected]
    assert max(chosen_scores) <= min(rest, default=1.0)


def test_ties_are_broken_deterministically_by_position():
    scores = fake_scores(ties=True)
    k = 7
    first = select_lowest_neurons(scores, k)
    shuffled = select_lowest_neurons(scores.sample(frac=1.0, random_state=3).reset_index(drop=True), k)
    assert len(first) == k
    key = ["layer", "kind", "index"]
    pd.testing.assert_frame_equal(first[key].reset_index(drop=True), shuffled[key].reset_index(drop=True))
    boundary = first["score"].max()
    tied_left_out = scores[(scores["score"] == boundary)].merge(first[key], how="left", indicator=True)
    tied_left_out = tied_left_out[tied_left_out["_merge"] == "left_only"]
    last_kept = first[first["score"] == boundary][key].values.tolist()[-1]
    assert all(tuple(row) > tuple(last_kept) for row in tied_left_out[key].values.tolist()), "ties must go to the earlier neuron"


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


def test_reversed_control_keeps_the_highest_scores():
    scores = fake_scores()
    mask = build_mask(scores, SHAPE, 0.03, strategy="reversed")
    k = mask.num_neurons
    chosen = {(kind, layer, i) for kind, per_layer in mask.indices.items() for layer, ids in per_layer.items() for i in ids}
    expected = scores.sort_values("score", ascending=False).head(k)
    assert chosen == {(kd, l, i) for l, kd, i in expected[["layer", "kind", "index"]].itertuples(index=False)}
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
