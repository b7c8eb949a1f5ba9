"""Captioning branch (tag_encoder + text_decoder): official key layout, weight tying, masks, loss,
greedy generation. Tiny sizes throughout; the tokenizer reads a vocabulary written here."""

from __future__ import annotations

import json

import pytest

from conftest import require_shared

torch = pytest.importorskip("torch", reason="the torch extra is needed: pip install 'ram-edge[torch]'")
pytest.importorskip("transformers", reason="the train extra is needed: pip install 'ram-edge[train]'")

from ram_edge.config import HeadConfig  # noqa: E402
from ram_edge.errors import ConfigError  # noqa: E402
from ram_edge.models.head import TaggingHead  # noqa: E402
from ram_edge.training.captioning import (  # noqa: E402
    CaptionConfig,
    CaptionDecoder,
    CaptioningBranch,
    CaptionTokenizer,
    TagEncoder,
    caption_batch,
    caption_loss,
    generate_captions,
    tag_batch,
    tie_to_tagging_head,
)

WORDS = "a picture of dog cat running sleeping on the grass sofa red ball with | , .".split()
CAPTIONS = ["a dog running on the grass", "a cat sleeping on the red sofa"]
TAGS = ["dog | grass", "cat | sofa"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n", encoding="utf-8")
    return CaptionTokenizer(path)


def tiny_config(tokenizer, **kw) -> CaptionConfig:
    values = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2, decoder_layers=2,
                  vocab_size=len(tokenizer), image_width=16, decoder_cross_width=32, max_caption_tokens=20,
                  max_tag_tokens=12, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    values.update(kw)
    return CaptionConfig(**values)


def test_tokenizer_special_tokens(tokenizer):
    base = 5 + len(WORDS)
    assert len(tokenizer) == base + 2
    assert tokenizer.bos_token_id == base and tokenizer.enc_token_id == base + 1
    assert (tokenizer.pad_token_id, tokenizer.sep_token_id) == (0, 3)
    # [CLS] a picture of [SEP] -> 5 ids, minus one: the official prompt_length 4.
    assert tokenizer.prompt_length("a picture of ") == 4


def test_batches(tokenizer):
    cfg = tiny_config(tokenizer)
    ids, mask = tag_batch(tokenizer, TAGS, cfg)
    assert ids.shape == (2, cfg.max_tag_tokens) and (ids[:, 0] == tokenizer.enc_token_id).all()
    assert mask[0].tolist()[:5] == [1, 1, 1, 1, 1] and mask[0, 5:].sum() == 0  # [ENC] dog | grass [SEP]
    ids, mask, labels = caption_batch(tokenizer, CAPTIONS, cfg)
    assert (ids[:, 0] == tokenizer.bos_token_id).all()
    assert (labels[:, :4] == -100).all()
    assert labels[0, 4].item() == tokenizer.tokenizer.convert_tokens_to_ids("a")
    assert (labels[mask == 0] == -100).all() and (labels[ids == tokenizer.sep_token_id] == tokenizer.sep_token_id).all()
    # The official pretraining passes captions without the prompt: the first caption words are masked.
    _, _, raw = caption_batch(tokenizer, CAPTIONS, tiny_config(tokenizer, prepend_prompt=False))
    assert raw[0, 4].item() == tokenizer.tokenizer.convert_tokens_to_ids("on")


def _golden_captioning(prefix: str) -> dict:
    sd = torch.load(require_shared("golden", "ram_tiny", "model.pth"), map_location="cpu", weights_only=True)["model"]
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _golden_config() -> CaptionConfig:
    cfg = json.loads(require_shared("golden", "ram_tiny", "config.json").read_text(encoding="utf-8"))
    return CaptionConfig.from_med_config(cfg["med_config"], image_width=cfg["encoder_width"])


def test_golden_tiny_strict_load():
    cfg = _golden_config()
    enc, dec = TagEncoder(cfg), CaptionDecoder(cfg)
    enc_sd, dec_sd = _golden_captioning("tag_encoder."), _golden_captioning("text_decoder.")
    enc.load_state_dict(enc_sd, strict=True)
    dec.load_state_dict(dec_sd, strict=True)
    for name, module, sd in (("tag_encoder", enc, enc_sd), ("text_decoder", dec, dec_sd)):
        mine = module.state_dict()
        assert list(mine) == list(sd), f"{name}: key order differs"
        for key, value in sd.items():
            assert torch.equal(mine[key], value), f"{name}.{key}"
    assert dec.cls.predictions.decoder.weight is dec.bert.embeddings.word_embeddings.weight
    # The golden med_config keeps encoder_width 768 with hidden 64: the official tiny decoder
    # cannot consume the tag encoder output, and we say so instead of failing inside a matmul.
    assert dec.bert.encoder.layer[0].crossattention.self.key.in_features == 768
    with pytest.raises(ConfigError, match="decoder_cross_width"):
        caption_loss(enc, dec, _StubTokenizer(), torch.zeros(1, 3, 512), ["x"], ["y"], cfg)


class _StubTokenizer:
    def __len__(self) -> int:
        return 512


def test_golden_tie_to_tagging_head():
    sd = torch.load(require_shared("golden", "ram_tiny", "model.pth"), map_location="cpu", weights_only=True)["model"]
    cfg = _golden_config()
    head = TaggingHead(HeadConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=2), 512)
    head.load_state_dict({k[len("tagging_head."):]: v for k, v in sd.items() if k.startswith("tagging_head.")})
    enc = TagEncoder(cfg)
    tied = tie_to_tagging_head(enc, head)
    assert len(tied) == 32
    assert enc.encoder.layer[1].output.LayerNorm.bias is head.encoder.layer[1].output.LayerNorm.bias
    assert enc.encoder.layer[0].crossattention.self.key.weight is head.encoder.layer[0].crossattention.self.key.weight
    assert "encoder.layer.0.attention.self.query.weight" not in tied
    # The official file holds the same tensors under both names.
    mine = enc.state_dict()
    for name in tied:
        assert torch.equal(mine[name], sd["tag_encoder." + name]), name
    # Shared tensors are counted once by parameters(), so an optimizer steps them once.
    both = torch.nn.ModuleDict({"tag_encoder": enc, "tagging_head": head})
    assert len(list(both.parameters())) == len(list(enc.parameters())) + len(list(head.parameters())) - 32


def test_tie_rejects_mismatched_head(tokenizer):
    head = TaggingHead(HeadConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128), 16)
    with pytest.raises(ConfigError, match="cannot tie"):
        tie_to_tagging_head(TagEncoder(tiny_config(tokenizer)), head)


def test_full_size_keys_match_manifest():
    manifest = json.loads(require_shared("golden", "manifest_ram_swin_large_384.json").read_text(encoding="utf-8"))
    expected = {k: (tuple(v["shape"]), v["dtype"]) for k, v in manifest["keys"].items() if v["path"] == "captioning_only"}
    with torch.device("meta"):
        branch = CaptioningBranch(CaptionConfig())
    got = {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in branch.state_dict().items()}
    assert sorted(set(got) - set(expected)) == [] and sorted(set(expected) - set(got)) == []
    assert got == expected
    groups = [sorted(g) for g in manifest["shared_storage_groups"] if any(k.startswith("text_decoder.") for k in g)]
    assert sorted(groups) == [
        ["text_decoder.bert.embeddings.word_embeddings.weight", "text_decoder.cls.predictions.decoder.weight"],
        ["text_decoder.cls.predictions.bias", "text_decoder.cls.predictions.decoder.bias"],
    ]


def test_decoder_weight_tying(tokenizer):
    dec = CaptionDecoder(tiny_config(tokenizer))
    pred = dec.cls.predictions
    assert pred.decoder.weight is dec.bert.embeddings.word_embeddings.weight
    assert pred.decoder.bias is pred.bias
    with torch.no_grad():
        dec.bert.embeddings.word_embeddings.weight[3, 0] = 7.0
    assert pred.decoder.weight[3, 0].item() == 7.0
    names = dict(dec.named_parameters())
    assert "cls.predictions.decoder.weight" not in names  # deduplicated: one tensor, one optimizer slot


def test_decoder_is_causal_and_encoder_is_not(tokenizer):
    torch.manual_seed(0)
    cfg = tiny_config(tokenizer)
    enc, dec = TagEncoder(cfg).eval(), CaptionDecoder(cfg).eval()
    image = torch.randn(1, 5, cfg.image_width)
    tags = torch.randint(5, len(tokenizer), (1, 8))
    hidden = enc(tags, torch.ones_like(tags), image)
    ids = torch.randint(5, len(tokenizer), (1, 10))
    changed = ids.clone()
    changed[0, 6] = (ids[0, 6] + 1 - 5) % (len(tokenizer) - 5) + 5
    with torch.no_grad():
        a, b = dec(ids, None, hidden), dec(changed, None, hidden)
        assert torch.equal(a[:, :6], b[:, :6])
        assert not torch.allclose(a[:, 6:], b[:, 6:])
        # The tag encoder is bidirectional: a later tag token changes the first position.
        other = tags.clone()
        other[0, 7] = (tags[0, 7] + 1 - 5) % (len(tokenizer) - 5) + 5
        assert not torch.allclose(enc(tags, torch.ones_like(tags), image)[:, 0],
                                  enc(other, torch.ones_like(other), image)[:, 0])
        # ...but ignores padded positions.
        mask = torch.ones_like(tags)
        mask[0, 7] = 0
        assert torch.allclose(enc(tags, mask, image)[:, :7], enc(other, mask, image)[:, :7], atol=1e-6)


def test_parity_with_transformers_bert(tokenizer):
    """Same numbers as Hugging Face's BERT with cross-attention (med BERT differs only in having no
    token-type embeddings, zeroed here, and a -10000 mask value)."""
    from transformers import BertConfig, BertLMHeadModel, BertModel

    torch.manual_seed(0)
    # HF's cross-attention keys are hidden_size wide, so the image width is set to match.
    cfg = tiny_config(tokenizer, image_width=32)
    branch = CaptioningBranch(cfg).eval()
    with torch.no_grad():
        for param in branch.parameters():  # move LayerNorms and biases off 1/0 so a wrong op shows
            param.add_(0.1 * torch.randn_like(param))
    hf_cfg = BertConfig(vocab_size=cfg.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        is_decoder=True, add_cross_attention=True)
    hf_enc = BertModel(hf_cfg, add_pooling_layer=False).eval()
    hf_dec = BertLMHeadModel(hf_cfg).eval()
    for hf, ours in ((hf_enc, branch.tag_encoder), (hf_dec, branch.text_decoder)):
        result = hf.load_state_dict(ours.state_dict(), strict=False)
        assert [k for k in result.missing_keys if "token_type" not in k] == []
        with torch.no_grad():
            for name, param in hf.named_parameters():
                if "token_type_embeddings" in name:
                    param.zero_()
    image = torch.randn(2, 5, 32)
    tag_ids, tag_mask = tag_batch(tokenizer, TAGS, cfg)
    with torch.no_grad():
        ours_hidden = branch.tag_encoder(tag_ids, tag_mask, image)
        # A 3-D mask keeps HF's decoder-configured model bidirectional, as the tag encoder is.
        square = tag_mask[:, None, :].expand(-1, tag_ids.shape[1], -1)
        hf_hidden = hf_enc(input_ids=tag_ids, attention_mask=square, encoder_hidden_states=image).last_hidden_state
        torch.testing.assert_close(ours_hidden, hf_hidden, atol=1e-5, rtol=1e-5)
        ids, mask, _ = caption_batch(tokenizer, CAPTIONS, cfg)
        ours_logits = branch.text_decoder(ids, mask, ours_hidden)
        hf_logits = hf_dec(input_ids=ids, attention_mask=mask, encoder_hidden_states=ours_hidden).logits
    valid = mask.bool()
    torch.testing.assert_close(ours_logits[valid], hf_logits[valid], atol=1e-5, rtol=1e-5)


def test_overfit_and_greedy_generation(tokenizer):
    torch.manual_seed(0)
    cfg = tiny_config(tokenizer)
    branch = CaptioningBranch(cfg)
    image = torch.randn(2, 5, cfg.image_width)
    optim = torch.optim.Adam(branch.parameters(), lr=3e-3)
    losses = []
    branch.train()
    for _ in range(30):
        loss = branch.loss(tokenizer, image, TAGS, CAPTIONS)
        assert torch.isfinite(loss)
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert branch.generate(tokenizer, image, TAGS, max_length=30) == CAPTIONS
    assert branch.training  # restored after generation
    # max_length counts the 4 prompt tokens, as Hugging Face's generate.
    short = generate_captions(branch.tag_encoder, branch.text_decoder, tokenizer, image, TAGS, cfg, max_length=6)
    assert short == [" ".join(c.split()[:2]) for c in CAPTIONS]


def test_input_errors(tokenizer):
    cfg = tiny_config(tokenizer)
    branch = CaptioningBranch(cfg)
    with pytest.raises(ConfigError, match="image_embeds"):
        branch.loss(tokenizer, torch.zeros(3, 5, cfg.image_width), TAGS, CAPTIONS)
    with pytest.raises(ConfigError, match="image_width"):
        branch.loss(tokenizer, torch.zeros(2, 5, cfg.image_width + 1), TAGS, CAPTIONS)
    small = CaptioningBranch(tiny_config(tokenizer, vocab_size=8))
    with pytest.raises(ConfigError, match="vocab_size"):
        small.loss(tokenizer, torch.zeros(2, 5, cfg.image_width), TAGS, CAPTIONS)
    with pytest.raises(ConfigError, match="not divisible"):
        CaptionConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ConfigError, match="not found"):
        CaptionTokenizer("/nonexistent/vocab.txt")
