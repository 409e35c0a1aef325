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
        expected = 100 * sum(scorer.score(r, p)[name].fmeasure for p, r in zip(PREDICTIONS, REFERENCES, strict=True)) / len(REFERENCES)
        assert ours[name] == pytest.approx(expected), name


def test_rouge_is_not_zero_on_identical_chinese_strings():
    text = "神经元级别的微调只更新少数神经元。"
    default = rouge_scorer.RougeScorer(["rouge1"]).score(text, text)["rouge1"].fmeasure
    assert default == 0.0  # the reference implementation's bug this tokenizer avoids
    metrics = summarization_metrics([text], [text])
    assert metrics["rouge1"] == metrics["rouge2"] == metrics["rougeL"] == pytest.approx(100.0)


def test_unicode_tokenizer_splits_cjk_characters_and_keeps_accents():
    assert UnicodeWordTokenizer().tokenize("Él dijo: 你好, world_2!") == ["él", "dijo", "你", "好", "world", "2"]


def test_unicode_tokenizer_splits_cjk_from_the_latin_word_or_number_it_touches():
    assert UnicodeWordTokenizer().tokenize("用git命令3次ABC") == ["用", "git", "命", "令", "3", "次", "abc"]


def test_unknown_task_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown task kind"):
        task_metrics("classification", ["a"], ["a"])


ANSWERS = {"one": "ant", "three": "cat", "fifteen": "dog", "eleven words": "emu"}


@pytest.fixture(scope="module")
def answering_model():
    """The tiny model fine-tuned until it answers each of four prompts with its own word."""
    from conftest import TINY_ARCHITECTURE

    from neft.data.records import Example
    from neft.methods import full_finetuning
    from neft.models import build_random_model, byte_level_tokenizer
    from neft.tokenization import encode_all, training_batches
    from neft.training import TrainSettings, train

    tokenizer = byte_level_tokenizer()
    model = build_random_model(TINY_ARCHITECTURE, vocab_size=len(tokenizer), seed=0)
    items = encode_all(tokenizer, [Example(str(i), prompt, answer) for i, (prompt, answer) in enumerate(ANSWERS.items())], max_length=64)
    trainable = full_finetuning(model)
    settings = TrainSettings(steps=150, learning_rate=3e-3, keep_best=False)
    train(trainable.model, trainable.parameters, training_batches(items, 4, tokenizer.pad_token_id, seed=0), settings)
    return model, tokenizer


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_predictions_are_the_known_answers_in_input_order(answering_model, batch_size):
    # Input order is neither ascending nor descending prompt length, so predictions returned in the
    # length-sorted batching order would misalign with the references.
    model, tokenizer = answering_model
    prompts = ["fifteen", "one", "eleven words", "three"]
    assert generate_greedy(model, tokenizer, prompts, max_new_tokens=6, batch_size=batch_size) == [ANSWERS[p] for p in prompts]


def test_rouge_on_partially_overlapping_chinese_counts_characters():
    # Reference 我爱北京天安门 (7 characters, 6 bigrams), prediction 我爱上海 (4, 3): 2 shared characters,
    # 1 shared bigram, longest common subsequence 我爱.
    metrics = summarization_metrics(["我爱上海"], ["我爱北京天安门"])
    f1 = lambda overlap, predicted, reference: 100 * 2 * overlap / (predicted + reference)  # noqa: E731
    assert metrics["rouge1"] == pytest.approx(f1(2, 4, 7))
    assert metrics["rouge2"] == pytest.approx(f1(1, 3, 6))
    assert metrics["rougeL"] == pytest.approx(f1(2, 4, 7))
