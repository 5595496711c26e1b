"""A randomly initialised BLIP captioning checkpoint built locally (tests and benchmarks must not
download anything)."""

from __future__ import annotations

import os

_TINY_WORDS = ("a an the of on in with and near top picture photo dog cat man woman person car bus bird horse "
               "sheep cow tree street grass water sky building pizza plate cup bottle table chair red blue green "
               "white black small large sitting standing").split()


def write_random_blip(out_dir: str, size: str = "tiny", seed: int = 0, init_std: float = 0.2) -> str:
    """A randomly initialised BLIP captioning checkpoint with tokenizer and processor, for tests
    and benchmarks that must not download anything. `tiny`: a few layers of width 32 on 32 x 32
    crops, initialised with `init_std` (larger than BLIP's 0.02 so that its captions depend on the
    image); `large`: the architecture of Salesforce/blip-image-captioning-large (ViT-L/16 at 384,
    BERT-base decoder) with BLIP's own initialisation, so the same FLOPs."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    os.makedirs(out_dir, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    if size == "tiny":
        vocab = specials + ["[DEC]"] + sorted(set(_TINY_WORDS))
        ids = {"pad_token_id": 0, "sep_token_id": 3, "eos_token_id": 3, "bos_token_id": 5}
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      image_size=32, patch_size=16, initializer_range=init_std)
        text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, encoder_hidden_size=32, max_position_embeddings=64,
                    initializer_range=init_std, **ids)
        image_size, projection = 32, 32
    elif size == "large":
        # BERT's layout: [PAD] at 0, [CLS] 101, [SEP] 102; BLIP adds [DEC] (bos) at 30522.
        vocab = [f"[unused{i}]" for i in range(30524)]
        for i, tok in zip((0, 100, 101, 102, 103, 30522), ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]):
            vocab[i] = tok
        for i in range(1000, 30522):
            vocab[i] = f"w{i}"
        ids = {"pad_token_id": 0, "sep_token_id": 102, "eos_token_id": 2, "bos_token_id": 30522}
        vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                      image_size=384, patch_size=16, layer_norm_eps=1e-5)
        text = dict(vocab_size=30524, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, encoder_hidden_size=1024, max_position_embeddings=512, **ids)
        image_size, projection = 384, 512
    else:
        raise ValueError(f"size {size!r}: tiny or large")
    with open(os.path.join(out_dir, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(os.path.join(out_dir, "vocab.txt"), bos_token="[DEC]")  # the vocab path is positional
    torch.manual_seed(seed)
    config = BlipConfig(vision_config=vision, text_config=text, projection_dim=projection,
                        image_text_hidden_size=min(projection, 256))
    BlipForConditionalGeneration(config).eval().save_pretrained(out_dir)
    processor = BlipProcessor(BlipImageProcessorPil(size={"height": image_size, "width": image_size}), tokenizer)
    processor.save_pretrained(out_dir)
    return out_dir
