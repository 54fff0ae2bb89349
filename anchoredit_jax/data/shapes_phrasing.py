"""ShapesEdit's instructions: templates, synonyms and the helpers that fill them.

The helpers draw from the sequence's own numpy Generator, in the order shapes_edit.py calls them,
so a seed gives the same instruction bytes on every machine (the published results were measured
on them; tests/test_shapes_edit.py pins a digest of the text). The splits are documented in
shapes_edit.py.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type hints only: shapes_edit imports this module
    from anchoredit_jax.data.shapes_edit import Creature, Scene

# Per template key: (train templates, held-out templates). Held-out ones appear only in
# the heldout_phrasings split, which uses nothing else.
TEMPLATES = {
    "recolor_obj": (["make the {obj} {color}", "change the {obj} to {color}", "turn the {obj} {color}",
                     "color the {obj} {color}", "paint the {obj} {color}", "recolor the {obj} {color}",
                     "change the color of the {obj} to {color}", "the {obj} should be {color}"],
                    ["switch the {obj} over to {color}", "give the {obj} a coat of {color} paint",
                     "I'd like the {obj} in {color}"]),
    "recolor_part": (["make the {subj}'s {part} {color}", "change the {subj}'s {part} to {color}",
                      "give the {subj} {a_color_part}", "paint the {subj}'s {part} {color}",
                      "turn the {part} of the {subj} {color}", "color the {part} {color}",
                      "change the color of the {subj}'s {part} to {color}"],
                     ["dye the {subj}'s {part} {color}", "the {subj}'s {part} {be} {color} now",
                      "let the {subj} have {a_color_part}"]),
    "add_obj": (["add {a_desc} {loc}", "put {a_desc} {loc}", "place {a_desc} {loc}", "draw {a_desc} {loc}",
                 "insert {a_desc} {loc}"],
                ["there should be {a_desc} {loc}", "include {a_desc} {loc}", "sketch {a_desc} {loc}"]),
    "add_hat": (["give the {subj} {a_color_hat}", "put {a_color_hat} on the {subj}",
                 "add {a_color_hat} to the {subj}'s head", "make the {subj} wear {a_color_hat}"],
                ["dress the {subj} in {a_color_hat}", "the {subj} needs {a_color_hat}"]),
    "remove_obj": (["remove the {obj}", "delete the {obj}", "take away the {obj}", "get rid of the {obj}",
                    "erase the {obj}", "take out the {obj}"],
                   ["make the {obj} disappear", "the {obj} has to go", "lose the {obj}"]),
    "remove_hat": (["remove the {subj}'s {part}", "take off the {subj}'s {part}",
                    "take the {part} off the {subj}", "the {subj} should not wear a hat"],
                   ["make the {subj} hatless", "lose the {subj}'s {part}"]),
    "move_region": (["move the {obj} {to}", "drag the {obj} {to}", "shift the {obj} {to}",
                     "bring the {obj} {to}", "reposition the {obj} {to}"],
                    ["relocate the {obj} {to}", "the {obj} should go {to}", "slide the {obj} over {to}"]),
    "move_shift": (["move the {obj} {dir}", "shift the {obj} {dir}", "nudge the {obj} {dir}",
                    "push the {obj} {dir}"],
                   ["scoot the {obj} {dir}", "relocate the {obj} {dir}"]),
    "resize_up": (["make the {obj} bigger", "make the {obj} larger", "enlarge the {obj}",
                   "scale up the {obj}", "increase the size of the {obj}"],
                  ["blow up the {obj}", "the {obj} should be bigger", "grow the {obj}"]),
    "resize_down": (["make the {obj} smaller", "shrink the {obj}", "scale down the {obj}",
                     "reduce the size of the {obj}", "make the {obj} a bit smaller"],
                    ["the {obj} should be smaller", "downsize the {obj}", "make the {obj} less big"]),
    "pattern_stripes": (["give the {subj}'s {part} stripes", "make the {subj}'s {part} striped",
                         "add stripes to the {subj}'s {part}", "paint stripes on the {part}"],
                        ["cover the {subj}'s {part} in stripes", "the {part} should have stripes"]),
    "pattern_dots": (["give the {subj}'s {part} polka dots", "add dots to the {subj}'s {part}",
                      "make the {subj}'s {part} spotted", "put spots on the {part}"],
                     ["cover the {subj}'s {part} in dots", "the {part} should have spots"]),
    "pattern_checks": (["give the {subj}'s {part} a checkered pattern", "make the {subj}'s {part} checkered",
                        "add a checkerboard pattern to the {part}", "put checks on the {subj}'s {part}"],
                       ["cover the {subj}'s {part} in checks", "the {part} should look like a checkerboard"]),
    "pattern_solid": (["make the {subj}'s {part} plain", "remove the pattern from the {subj}'s {part}",
                       "make the {part} a solid color", "get rid of the pattern on the {part}"],
                      ["the {part} should be one flat color", "clear the {subj}'s {part} of any pattern"]),
    "background": (["change the background to {bg}", "make the background {bg}",
                    "replace the background with {bg}", "use {bg} as the background",
                    "set the background to {bg}"],
                   ["swap the backdrop for {bg}", "the background should become {bg}",
                    "put {bg} behind everything"]),
    "noop": (["keep it as it is", "leave the image unchanged", "no changes", "don't change anything",
              "keep everything the same", "leave it alone", "do nothing"],
             ["this looks perfect, keep it", "no edit needed this time", "same picture again, please"]),
}
SPECIES = {"pointy": "cat", "round": "bear", "long": "bunny", "horns": "monster", "antennae": "alien"}
SHAPE_WORDS = {"circle": ["circle", "ball", "disc"], "square": ["square", "block"], "triangle": ["triangle"],
               "star": ["star"], "diamond": ["diamond"], "heart": ["heart"], "hexagon": ["hexagon"]}
LOC = {"top left": ["in the top left corner", "at the top left"], "top": ["at the top", "along the top edge"],
       "top right": ["in the top right corner", "at the top right"], "left": ["on the left side", "at the left edge"],
       "centre": ["in the middle", "in the centre"], "right": ["on the right side", "at the right edge"],
       "bottom left": ["in the bottom left corner", "at the bottom left"],
       "bottom": ["at the bottom", "along the bottom edge"],
       "bottom right": ["in the bottom right corner", "at the bottom right"]}
TO = {r: ["to " + p.split(" ", 1)[1] for p in ps] for r, ps in LOC.items()}
DIRS = {(-1, 0): ["a bit to the left", "slightly to the left", "a little to the left"],
        (1, 0): ["a bit to the right", "slightly to the right", "a little to the right"],
        (0, -1): ["a bit up", "slightly higher", "a little upwards"],
        (0, 1): ["a bit down", "slightly lower", "a little downwards"]}
BG_PHRASES = {"plain": ["plain {c}", "{c}"], "gradient": ["a {c} gradient"], "stripes": ["{c} stripes"],
              "checks": ["a {c} checkerboard"], "dots": ["{c} polka dots"]}


def pick(rng, seq):
    """One uniform choice from `seq` (one `rng.integers` draw); scene sampling uses it too."""
    seq = list(seq)
    return seq[int(rng.integers(len(seq)))]


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def part_words(c: Creature, name: str) -> tuple[list[str], bool]:
    """Synonyms of a part's noun and whether it is plural (for 'is'/'are')."""
    shape = getattr(c, name).shape
    if name == "ears":
        return ({"horns": ["horns"], "antennae": ["antennae"]}.get(shape, ["ears"]), True)
    if name == "eyes":
        return (["eye"], False) if shape == "one" else (["eyes"], True)
    if name == "hat":
        return [shape, "hat"], False
    return {"body": ["body", "torso"], "feet": ["feet", "paws"]}.get(name, [name]), name == "feet"


def subject_word(rng, c: Creature) -> str:
    return pick(rng, [SPECIES[c.ears.shape]] * 2 + ["creature", "character"])


def object_ref(rng, scene: Scene, i: int) -> str:
    o = scene.objects[i]
    unique = sum(p.shape == o.shape for p in scene.objects) == 1
    word = pick(rng, SHAPE_WORDS[o.shape])
    return word if unique and rng.random() < 0.4 else f"{o.color} {word}"


def fill_template(rng, key: str, split: str, **slots) -> tuple[str, str]:
    """Fill a template of `key`: returns (instruction, template id)."""
    held = split == "heldout_phrasings"
    options = TEMPLATES[key][int(held)]
    i = int(rng.integers(len(options)))
    text = options[i].format(**slots)
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.3:
        text += "."
    return text, f"{key}:{'h' if held else 't'}{i}"
