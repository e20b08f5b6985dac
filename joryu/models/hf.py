"""Small Hugging Face transformers built from configs (random weights, nothing downloaded).

Factories for configs and tests, by import path: ``name: joryu.models.hf:bert_classifier``.
``transformers`` is imported when a factory is called, so joryu itself does not need it.
With a pretrained model, build it yourself (``AutoModelForCausalLM.from_pretrained(...)``) and
pass it to ``joryu.distill``; these factories only make the tiny ones.
"""

from __future__ import annotations

from joryu.errors import ConfigError


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("this model needs Hugging Face transformers: pip install transformers") from None
    return transformers


def _bert_config(tf, vocab_size, num_classes, hidden_size, layers, heads, intermediate_size, max_len,
                 dropout):
    """The small ``BertConfig`` both BERT factories build (padding id 0)."""
    return tf.BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers,
                         num_attention_heads=heads, intermediate_size=intermediate_size or 4 * hidden_size,
                         max_position_embeddings=max_len, num_labels=num_classes,
                         hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, pad_token_id=0)


def bert_classifier(vocab_size: int = 64, num_classes: int = 2, hidden_size: int = 32, layers: int = 2,
                    heads: int = 2, intermediate_size: int | None = None, max_len: int = 64,
                    dropout: float = 0.0):
    """``BertForSequenceClassification``: logits ``[B, num_classes]`` from ``input_ids`` (+ mask)."""
    tf = _transformers()
    return tf.BertForSequenceClassification(_bert_config(tf, vocab_size, num_classes, hidden_size, layers,
                                                         heads, intermediate_size, max_len, dropout))


def bert_token_classifier(vocab_size: int = 64, num_classes: int = 2, hidden_size: int = 32, layers: int = 2,
                          heads: int = 2, intermediate_size: int | None = None, max_len: int = 64,
                          dropout: float = 0.0):
    """``BertForTokenClassification``: logits ``[B, L, num_classes]``."""
    tf = _transformers()
    return tf.BertForTokenClassification(_bert_config(tf, vocab_size, num_classes, hidden_size, layers,
                                                      heads, intermediate_size, max_len, dropout))


def gpt2_lm(vocab_size: int = 64, hidden_size: int = 32, layers: int = 2, heads: int = 2, max_len: int = 64,
            dropout: float = 0.0):
    """``GPT2LMHeadModel``: next-token logits ``[B, L, vocab_size]`` from ``input_ids`` (+ mask)."""
    tf = _transformers()
    cfg = tf.GPT2Config(vocab_size=vocab_size, n_embd=hidden_size, n_layer=layers, n_head=heads,
                        n_positions=max_len, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
                        use_cache=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return tf.GPT2LMHeadModel(cfg)
