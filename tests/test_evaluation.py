import pytest
import sacrebleu
from rouge_score import rouge_scorer

from neft.evaluation import UnicodeWordTokenizer, generate_greedy, summarization_metrics, task_metrics, translation_metrics

PREDICTIONS = ["The cat sat on the mat.", "In the beginning God created the heavens and the earth.", "Hello there"]
REFERENCES = ["The cat is sitting on the mat.", "In the beginning, God created the heavens and the earth.", "Hi there"]


def test_bleu_and_chrf_equal_sacrebleu_with_signatures():
    metrics = translation_metrics(PREDICTIONS, REFERENCES)
    assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score)
    assert metrics["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score)
    assert metrics["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert "nc:6" in metrics["chrf_signature"]
    assert 0 < metrics["bleu"] < 100


def test_chinese_bleu_uses_the_zh_tokenizer():
    metrics = translation_metrics(["我爱北京天安门"], ["我爱北京"], bleu_tokenize="zh")
    assert "tok:zh" in metrics["bleu_signature"]
    assert metrics["bleu"] == pytest.approx(sacrebleu.corpus_bleu(["我爱北京天安门"], [["我爱北京"]], tokenize="zh").score)


def test_rouge_equals_rouge_score_on_english():
    ours = summarization_metrics(PREDICTIONS, REFERENCES)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
    for name in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        expected = 100 * sum(scorer.score(r, p)[name].fmeasure for p, r in zip(PREDICTIONS, REFERENCES)) / len(REFERENCES)
        assert ours[name] == pytest.approx(expected), name


def test_rouge_is_not_zero_on_identical_chinese_strings():
    text = "神经元级别的微调只更新少数神经元。"
    default = rouge_scorer.RougeScorer(["rouge1"]).score(text, text)["rouge1"].fmeasure
    assert default == 0.0  # the reference implementation's bug this tokenizer avoids
    metrics = summarization_metrics([text], [text])
    assert metrics["rouge1"] == metrics["rouge2"] == metrics["rougeL"] == pytest.approx(100.0)


def test_unicode_tokenizer_splits_cjk_characters_and_keeps_accents():
    assert UnicodeWordTokenizer().tokenize("Él dijo: 你好, world_2!") == ["él", "dijo", "你", "好", "world", "2"]


def test_unknown_task_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown task kind"):
        task_metrics("classification", ["a"], ["a"])


def test_greedy_generation_is_batched_without_changing_results(tiny_model, tokenizer):
    prompts = ["short", "a much longer prompt than the other one", "mid length"]
    one_by_one = generate_greedy(tiny_model, tokenizer, prompts, max_new_tokens=5, batch_size=1)
    batched = generate_greedy(tiny_model, tokenizer, prompts, max_new_tokens=5, batch_size=3)
    assert len(batched) == 3
    assert batched == one_by_one
