"""The zoo's tokenizer: a small byte-level BPE trained on an embedded English corpus.

The corpus below is plain prose written for this module (no download). Training is
deterministic, so the same vocabulary size always gives a byte-identical `tokenizer.json`.
Special tokens are `<pad>` = 0, `<s>` = 1, `</s>` = 2 (the pad/bos/eos ids of the zoo configs);
encoding a prompt prepends `<s>`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ekka.errors import UsageError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)  # ids 0, 1, 2 in this order
BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)
DEFAULT_VOCAB_SIZE = 512
DEFAULT_MODEL_MAX_LENGTH = 256

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

CORPUS = """\
The quick brown fox jumps over the lazy dog while seven small birds sing on an old wooden fence
near the quiet river, and a tired farmer counts apples. In the morning the farmer walks to the
field with a basket in one hand and a cup of tea in the other. The dog follows him, sniffing the
wet grass, and the birds fly from the fence to the roof of the barn and back again.

A small town stood at the edge of the valley. Its houses were built of grey stone, and each one
had a garden with a few rows of beans, a tree or two, and a bench where people sat in the
evening to talk about the weather. When it rained, the children ran through the streets with
their boots splashing in the puddles, and their parents called them home for supper before the
lamps were lit.

Numbers are written with digits: one, two, three, four, five, six, seven, eight, nine and ten
are 1, 2, 3, 4, 5, 6, 7, 8, 9 and 10. A year has 12 months and 365 days, a day has 24 hours, and
an hour has 60 minutes. If you add 17 and 25 you get 42; if you take 8 away from 50 you get 42
as well. Some people think that 42 is the answer to everything, but most questions have longer
answers than that.

The library opened at nine o'clock. Inside, long shelves held books about history, science,
music, cooking and the sea. A student sat by the window reading about the stars: how they are
born from clouds of gas, how they shine for millions of years, and how the largest of them end
in a bright explosion that can be seen from far away. Another reader wrote notes in a small
notebook, stopping now and then to look up a word in the dictionary.

Computers follow instructions. A program is a list of steps that tell the machine what to do
with the information it is given. The steps must be exact, because a computer does not guess
what you meant; it does what you wrote. When a program has a mistake in it, we call the mistake
a bug, and finding it can take a long time. Good programmers test their work often, compare the
results with what they expected, and write down what they learned so that others can check it.

In the kitchen, the baker mixed flour, water, salt and yeast in a large bowl. She kneaded the
dough for ten minutes until it was smooth, covered it with a cloth, and left it to rise in a
warm place. An hour later the dough had doubled in size. She shaped it into two round loaves,
cut a cross into the top of each one, and baked them in a hot oven until the crust was golden
and the bread sounded hollow when she tapped it.

The ship left the harbour at dawn. The captain stood on the deck and watched the coast grow
smaller behind them, while the sailors checked the ropes and raised the sails. For three days
the wind was kind and the sea was calm. On the fourth day dark clouds gathered in the west, the
waves grew higher, and everyone on board worked through the night to keep the ship on course.
By morning the storm had passed, and a pale sun rose over the water.

Learning a new language is like exploring a new city. At first every street looks strange and
every sign is hard to read. Slowly you begin to recognise the words you see every day: bread,
water, train, station, left, right, thank you, good morning. After a while you can ask for
directions, order a meal, and understand the answer. One day you notice that you have been
thinking in the new language without translating, and the city feels a little more like home.

Questions help us learn. Why is the sky blue? Where does the wind come from? How do plants turn
light into food? What makes a bridge strong enough to carry a heavy truck? Each answer leads to
new questions, and that is how knowledge grows: one careful step after another, checked against
what we can observe and measure, and shared with anyone who wants to understand it too.
"""


def _train(vocab_size: int) -> Tokenizer:
    """Train the byte-level BPE on the embedded corpus and attach the `<s>` post-processor."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return tokenizer


def _check_special_ids(tokenizer: Tokenizer) -> None:
    """The zoo configs use pad/bos/eos ids 0/1/2: make sure training kept them there."""
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        actual = tokenizer.token_to_id(token)
        if actual != expected_id:
            raise RuntimeError(f"tokenizer: {token!r} got id {actual}, expected {expected_id}")


def tokenizer_config(model_max_length: int = DEFAULT_MODEL_MAX_LENGTH) -> dict[str, object]:
    """The `tokenizer_config.json` that makes transformers load `tokenizer.json` as a fast tokenizer."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }


def build_tokenizer(
    out_dir: Path,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    *,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
) -> None:
    """Train the tokenizer and write `tokenizer.json` + `tokenizer_config.json` into `out_dir`.

    Raises UsageError when `vocab_size` is below the byte alphabet plus the special tokens, or
    above what the embedded corpus can supply.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise UsageError(
            f"tokenizer vocab_size must be at least {MIN_VOCAB_SIZE} "
            f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens), got {vocab_size}"
        )
    tokenizer = _train(vocab_size)
    _check_special_ids(tokenizer)
    trained = tokenizer.get_vocab_size(with_added_tokens=True)
    if trained != vocab_size:
        raise UsageError(
            f"tokenizer vocab_size {vocab_size} is more than the zoo's corpus supports "
            f"(it gives {trained} entries); use a smaller vocabulary"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(tokenizer.to_str(pretty=True) + "\n", encoding="utf-8")
    config_text = json.dumps(tokenizer_config(model_max_length), sort_keys=True, indent=2)
    (out_dir / "tokenizer_config.json").write_text(config_text + "\n", encoding="utf-8")
