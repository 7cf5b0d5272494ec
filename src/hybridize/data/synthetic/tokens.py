"""The word list keys and passkeys are drawn from, and tokenizing the pieces of a prompt."""

from __future__ import annotations

# Keys, passkey words and MQAR keys are drawn from these: short, common, distinct English words.
WORDS = (
    "apple", "anchor", "arrow", "autumn", "badge", "bakery", "balloon", "bamboo", "banana", "barrel", "basket",
    "beacon", "bicycle", "blanket", "bottle", "bracelet", "bridge", "bucket", "butter", "cabin", "cactus", "camera",
    "candle", "canyon", "carpet", "castle", "cellar", "chair", "cherry", "chimney", "circle", "clock", "cloud",
    "coffee", "comet", "copper", "cotton", "crayon", "cricket", "crystal", "curtain", "dagger", "desert", "diamond",
    "dolphin", "dragon", "drum", "eagle", "echo", "elbow", "engine", "falcon", "feather", "fence", "fiddle", "flame",
    "flower", "forest", "fossil", "fountain", "garden", "garlic", "giraffe", "glacier", "globe", "glove", "granite",
    "guitar", "hammer", "harbor", "harvest", "helmet", "honey", "horizon", "island", "ivory", "jacket", "jungle",
    "kettle", "kitten", "ladder", "lantern", "lemon", "library", "lizard", "magnet", "mango", "maple", "marble",
    "meadow", "mirror", "monkey", "mountain", "napkin", "needle", "nest", "ocean", "olive", "orange", "orbit",
    "oyster", "paddle", "palace", "panda", "parrot", "pebble", "pencil", "pepper", "piano", "pillow", "planet",
    "pocket", "pond", "potato", "prism", "pumpkin", "puzzle", "quartz", "rabbit", "radio", "rainbow", "raven",
    "ribbon", "river", "rocket", "saddle", "salmon", "sandal", "satellite", "scarf", "shadow", "shovel", "silver",
    "socket", "spider", "spoon", "stable", "statue", "stone", "summit", "sunset", "swan", "table", "teapot",
    "thunder", "tiger", "timber", "tomato", "tower", "tractor", "trumpet", "tulip", "tunnel", "turtle", "umbrella",
    "valley", "velvet", "violin", "volcano", "wagon", "walnut", "wardrobe", "whale", "whistle", "window", "winter",
    "wizard", "yogurt", "zebra",
)


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def special_prefix(tokenizer) -> list[int]:
    """The tokens the tokenizer puts before a text by itself (Llama's BOS; nothing for Qwen)."""
    bare = encode(tokenizer, "a")
    full = list(tokenizer.encode("a"))
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return full[:i]
    return []
