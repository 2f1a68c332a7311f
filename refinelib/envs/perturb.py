"""Action-template perturbations: the robustness test of method.md §12 (rule set ``perturb-v1``).

A *perturbation* rewrites the command language of an environment family so that every command keeps its
meaning but changes its tokens or their order (``take apple 1 from countertop 1`` ->
``from countertop 1 take apple 1``). Each rule is a bijection on command strings: ``forward`` turns a
canonical command into its perturbed form, ``inverse`` turns perturbed text back (None for text in the
*old* format that the rule rewrites: a memorising agent that keeps emitting it must fail, as in the
paper's Fig. 2b, not be silently understood). :class:`~refinelib.envs.perturbed.PerturbedEnv` wraps any
environment: it shows the perturbed commands (valid actions, ``check valid actions``, the oracle) and maps
the agent's text back before the environment steps. :func:`rewrite_instruction` rewrites an agent
instruction (the action templates and the example's ``Action:`` lines) so the agent is told the perturbed
format. Observations are never rewritten: the rules perturb the action format only, as in the paper.

``perturb-v1`` is OUR proposal (the paper's five ALFWorld rules are unpublished):

* household: R1 reorder (receptacle first), R2 verb synonyms, R3 prepositions, R4 object-id format
  (``apple 1`` -> ``apple-1``), R5 composition R1+R2+R3, R6 presentation control (placeholders renamed,
  template list shuffled, commands unchanged: a model that reads the list should not move);
* babyai: R1 verb synonyms, R2 object-number format (``red ball 1`` -> ``red ball #1``);
* pddl: R1 operator synonyms, R2 reversed argument order, R3 call syntax (``pick(ball1, rooma, left)``);
* textadventure: R1 verb synonyms, R2 reorder (``take X from Y`` -> ``from Y take X``);
* sciworld: R1 verb synonyms, R2 reorder (``move X to Y`` -> ``to Y move X``).

Under PDDL's R2 an old-format command can be another well-formed command (``stack b1 b2`` reads as
``stack b2 b1``): that is what an argument-order change means, and the environment judges it.

>>> r1 = get_rule("household", "R1")
>>> r1.forward("take apple 1 from countertop 1")
'from countertop 1 take apple 1'
>>> r1.inverse("from countertop 1 take apple 1")
'take apple 1 from countertop 1'
>>> r1.inverse("take apple 1 from countertop 1") is None  # the old format is refused
True
>>> r1.inverse("look"), r1.inverse("dance")  # commands the rule leaves alone pass through
('look', 'dance')
>>> get_rule("household", "R4").forward("move apple 1 to fridge 1")
'move apple-1 to fridge-1'
>>> get_rule("pddl", "R3").forward("pick ball1 rooma left")
'pick(ball1, rooma, left)'

Changelog: perturb-v1: first version.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from refinelib.envs.base import CHECK_VALID_ACTIONS

PERTURB_VERSION = "perturb-v1"  # bump on any change to a rule's output; one line in the changelog above
_PLACEHOLDER = r"<[^<>\n]+>"  # "<object>", "<from room>": a template slot in an agent instruction
# What the agent hears when it uses the old format (household: ALFWorld's own answer, as in Fig. 2b).
REJECTED = {"household": "Nothing happens.", "sciworld": "No known action matches that input."}
REJECTED_DEFAULT = ('The action "{action}" is not recognized. Say "check valid actions" to list the valid '
                    'actions.')


# ----- template rules (household, babyai, textadventure, sciworld) ----------------------------------
@dataclass(frozen=True)
class IdFormat:
    """How a slot holding an object id is written: canonical ``name N`` <-> ``name{sep}N``."""

    sep: str  # "-" gives "apple-1"; " #" gives "red ball #1"

    def forward(self, value: str) -> str | None:
        m = re.fullmatch(r"(.*\S) (\d+)", value)
        return f"{m.group(1)}{self.sep}{m.group(2)}" if m else None

    def inverse(self, value: str) -> str | None:
        m = re.fullmatch(rf"(.*\S){re.escape(self.sep)}(\d+)", value)
        return f"{m.group(1)} {m.group(2)}" if m and not m.group(1).endswith(" ") else None


def _compile(template: str, slot: str) -> re.Pattern:
    """``"take {obj} from {recep}"`` -> a regex whose named groups are the slots."""
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{slot})" for i, p in enumerate(parts))
    return re.compile(regex, re.I)


@dataclass(frozen=True)
class Rewrite:
    """One command template in both forms, e.g. ``take {obj} from {recep}`` / ``from {recep} take {obj}``."""

    canonical: str
    perturbed: str

    def __post_init__(self) -> None:  # compiled once; slots match any text, the shortest first
        object.__setattr__(self, "_canon", _compile(self.canonical, ".+?"))
        object.__setattr__(self, "_pert", _compile(self.perturbed, ".+?"))


@dataclass(frozen=True)
class Rule:
    """A bijection on one family's commands, given as template rewrites (tried in order, first match wins).

    Commands no template matches are left unchanged. With ``ids``, every slot must be an object id and
    is rewritten in that format too.
    """

    family: str
    name: str  # "R1" ...
    description: str
    rewrites: tuple[Rewrite, ...] = ()
    ids: IdFormat | None = None
    note: str = ""  # a sentence added after the action list of the instruction
    prose: tuple[tuple[str, str], ...] = ()  # (old, new) replacements in the instruction's prose
    placeholders: tuple[tuple[str, str], ...] = ()  # presentation control: renamed "<slots>"
    shuffle: bool = False  # presentation control: shuffle the action list

    @property
    def id(self) -> str:
        return f"{PERTURB_VERSION}:{self.name}"

    def _fill(self, template: str, match: re.Match, convert) -> str | None:
        values = {}
        for key, value in match.groupdict().items():
            values[key] = convert(value) if convert else value
            if values[key] is None:
                return None
        return template.format(**values)

    def forward(self, command: str) -> str:
        """The perturbed form of a canonical command (unchanged if the rule does not touch it)."""
        for r in self.rewrites:
            m = r._canon.fullmatch(command)
            if m and (out := self._fill(r.perturbed, m, self.ids and self.ids.forward)) is not None:
                return out
        return command

    def inverse(self, text: str) -> str | None:
        """The canonical command for perturbed ``text``; None if ``text`` is in the old format."""
        for r in self.rewrites:
            m = r._pert.fullmatch(text)
            if m and (out := self._fill(r.canonical, m, self.ids and self.ids.inverse)) is not None:
                return out
        return None if self.forward(text) != text else text

    def rewrite_template(self, line: str) -> str:
        """Rewrite the ``<placeholder>`` templates inside one line of an action list."""
        for r in self.rewrites:
            pattern = _compile(r.canonical, _PLACEHOLDER)
            line = pattern.sub(lambda m, r=r: r.perturbed.format(**m.groupdict()), line) \
                if r.canonical != r.perturbed else line
        return line


# ----- token rules (pddl: "operator arg1 arg2 ...") -------------------------------------------------
@dataclass(frozen=True)
class TokenRule:
    """A bijection on ``operator arg ...`` commands: renamed operators, reversed arguments, call syntax."""

    family: str
    name: str
    description: str
    operators: tuple[tuple[str, str], ...] = ()  # (canonical, perturbed) operator names
    reverse: bool = False  # arguments in reverse order
    call: bool = False  # "op(a, b)" instead of "op a b"
    note: str = ""
    prose: tuple[tuple[str, str], ...] = ()
    placeholders: tuple[tuple[str, str], ...] = ()
    shuffle: bool = False

    @property
    def id(self) -> str:
        return f"{PERTURB_VERSION}:{self.name}"

    def _split(self, text: str, call: bool) -> tuple[str, list[str]] | None:
        if call:
            m = re.fullmatch(r"\s*(\S+?)\s*\((.*)\)\s*", text)
            if not m:
                return None
            args = [a.strip() for a in m.group(2).split(",")] if m.group(2).strip() else []
            return (m.group(1), args) if all(args) else None
        words = re.findall(rf"{_PLACEHOLDER}|\S+", text)
        return (words[0], words[1:]) if words else None

    def forward(self, command: str) -> str:
        parts = self._split(command, call=False)
        if parts is None:
            return command
        op, args = parts
        op = dict(self.operators).get(op.lower(), op)
        args = args[::-1] if self.reverse else args
        return f"{op}({', '.join(args)})" if self.call else " ".join([op, *args])

    def inverse(self, text: str) -> str | None:
        parts = self._split(text, self.call)
        if parts is None:  # not in the perturbed syntax: refuse a known operator, pass anything else on
            return None if self.call and self._known(text) else text
        op, args = parts
        back = {p: c for c, p in self.operators}
        if op.lower() in back:
            op = back[op.lower()]
        elif op.lower() in dict(self.operators):
            return None  # the old operator name
        return " ".join([op, *(args[::-1] if self.reverse else args)])

    def _known(self, text: str) -> bool:
        words = text.split()
        return bool(words) and words[0].lower() in _pddl_operators()

    def rewrite_template(self, line: str) -> str:
        return self.forward(line)


def _pddl_operators() -> frozenset[str]:
    """Every operator name of our PDDL domains (the canonical vocabulary the call-syntax rule refuses)."""
    from importlib import resources

    names = set()
    for f in resources.files("refinelib.envs").joinpath("pddl_domains").iterdir():
        if f.name.endswith(".pddl"):
            names |= set(re.findall(r":action\s+([\w-]+)", f.read_text(), re.I))
    return frozenset(n.lower() for n in names)


# ----- the rule set perturb-v1 ---------------------------------------------------------------------
def _rules(family: str, name: str, description: str, pairs: list[tuple[str, str]], **kw) -> Rule:
    return Rule(family, name, description, tuple(Rewrite(c, p) for c, p in pairs), **kw)


_HOUSEHOLD = [  # the engine's wording (environments.md §4.4), most specific first
    "go to {recep}", "open {recep}", "close {recep}", "take {obj} from {recep}", "move {obj} to {recep}",
    "heat {obj} with {recep}", "cool {obj} with {recep}", "clean {obj} with {recep}", "use {obj}",
    "examine {obj}",
]
_HH_SYNONYMS = {"go to": "walk to", "take": "pick up", "move": "transfer", "heat": "warm", "cool": "chill",
                "clean": "wash", "use": "activate", "examine": "inspect"}
_HH_WITH = ("heat", "cool", "clean")

HOUSEHOLD_RULES = (
    _rules("household", "R1", "reorder: the receptacle first", [
        ("take {obj} from {recep}", "from {recep} take {obj}"),
        ("move {obj} to {recep}", "to {recep} move {obj}"),
        *[(f"{v} {{obj}} with {{recep}}", f"with {{recep}} {v} {{obj}}") for v in _HH_WITH]]),
    _rules("household", "R2", "verb synonyms", [
        ("go to {recep}", "walk to {recep}"),
        ("take {obj} from {recep}", "pick up {obj} from {recep}"),
        ("move {obj} to {recep}", "transfer {obj} to {recep}"),
        *[(f"{v} {{obj}} with {{recep}}", f"{_HH_SYNONYMS[v]} {{obj}} with {{recep}}") for v in _HH_WITH],
        ("use {obj}", "activate {obj}"), ("examine {obj}", "inspect {obj}")]),
    _rules("household", "R3", "changed prepositions", [
        ("take {obj} from {recep}", "take {obj} out of {recep}"),
        ("move {obj} to {recep}", "move {obj} onto {recep}"),
        *[(f"{v} {{obj}} with {{recep}}", f"{v} {{obj}} using {{recep}}") for v in _HH_WITH]]),
    _rules("household", "R4", "object-id format: 'apple 1' -> 'apple-1'", [(t, t) for t in _HOUSEHOLD],
           ids=IdFormat("-"), note='Write every object and receptacle with a hyphen before its number, '
           'e.g. "apple-1", "countertop-2".'),
    _rules("household", "R5", "composition of R1, R2 and R3", [
        ("go to {recep}", "walk to {recep}"),
        ("take {obj} from {recep}", "out of {recep} pick up {obj}"),
        ("move {obj} to {recep}", "onto {recep} transfer {obj}"),
        *[(f"{v} {{obj}} with {{recep}}", f"using {{recep}} {_HH_SYNONYMS[v]} {{obj}}") for v in _HH_WITH],
        ("use {obj}", "activate {obj}"), ("examine {obj}", "inspect {obj}")]),
    Rule("household", "R6", "presentation control: placeholders renamed, action list shuffled, "
         "commands unchanged", shuffle=True, placeholders=(
             ("<object or receptacle>", "<item or place>"), ("<receptacle>", "<place>"),
             ("<object>", "<item>"))),
)

BABYAI_RULES = (
    _rules("babyai", "R1", "verb synonyms", [
        ("turn left", "rotate left"), ("turn right", "rotate right"), ("move forward", "step forward"),
        ("toggle and go through {door}", "open and pass through {door}"),
        ("go through {door}", "pass through {door}"), ("go to {obj}", "walk to {obj}"),
        ("pickup {obj}", "grab {obj}"), ("drop", "put down"), ("toggle", "interact")]),
    _rules("babyai", "R2", "object-number format: 'red ball 1' -> 'red ball #1'", [
        (t, t) for t in ("toggle and go through {obj}", "go through {obj}", "go to {obj}", "pickup {obj}")],
        ids=IdFormat(" #"), note='Write the number of an object or door with "#", e.g. "red ball #1".'),
)

_PDDL_SYNONYMS = (
    ("pick", "grab"), ("drop", "release"), ("move", "travel"),  # gripper
    ("pickup", "lift"), ("putdown", "set-down"), ("stack", "place-on"), ("unstack", "take-off"),  # blocks
    ("open", "unseal"), ("close", "seal"), ("fetch", "get"), ("put-away", "stow"), ("loosen", "slacken"),
    ("tighten", "fasten"), ("jack-up", "raise"), ("jack-down", "lower"), ("undo", "unscrew"),
    ("do-up", "screw-on"), ("remove-wheel", "take-off-wheel"), ("put-on-wheel", "mount-wheel"),
    ("inflate", "pump-up"),  # tyreworld
    ("grasp", "seize"), ("leave", "let-go"), ("fill-shot", "load-shot"), ("refill-shot", "reload-shot"),
    ("empty-shot", "drain-shot"), ("clean-shot", "rinse-shot"),
    ("pour-shot-to-clean-shaker", "tip-shot-to-clean-shaker"),
    ("pour-shot-to-used-shaker", "tip-shot-to-used-shaker"), ("empty-shaker", "drain-shaker"),
    ("clean-shaker", "rinse-shaker"), ("shake", "mix"),
    ("pour-shaker-to-shot", "tip-shaker-to-shot"),  # barman
)

PDDL_RULES = (
    TokenRule("pddl", "R1", "operator synonyms", operators=_PDDL_SYNONYMS),
    TokenRule("pddl", "R2", "arguments in reverse order", reverse=True,
              note="Arguments are given in reverse order, exactly as in the list above."),
    TokenRule("pddl", "R3", "call syntax: 'pick(ball1, rooma, left)'", call=True,
              prose=(("followed by its object names, separated by spaces.",
                      "followed by its object names in brackets, separated by commas."),)),
)

_TA_WITH = ("unlock", "lock", "cook", "slice", "dice", "chop")
TEXTADVENTURE_RULES = (
    _rules("textadventure", "R1", "verb synonyms", [
        ("go {direction}", "head {direction}"), ("examine {obj}", "inspect {obj}"),
        ("take {obj} from {recep}", "get {obj} from {recep}"), ("take {obj}", "get {obj}"),
        ("drop {obj}", "discard {obj}"), ("put {obj} on {recep}", "place {obj} on {recep}"),
        ("insert {obj} into {recep}", "stow {obj} into {recep}"), ("eat {obj}", "consume {obj}")]),
    _rules("textadventure", "R2", "reorder: the container, supporter or tool first", [
        ("take {obj} from {recep}", "from {recep} take {obj}"),
        ("put {obj} on {recep}", "on {recep} put {obj}"),
        ("insert {obj} into {recep}", "into {recep} insert {obj}"),
        *[(f"{v} {{obj}} with {{tool}}", f"with {{tool}} {v} {{obj}}") for v in _TA_WITH]]),
)

SCIWORLD_RULES = (
    _rules("sciworld", "R1", "verb synonyms", [
        ("look at {obj}", "inspect {obj}"), ("go to {place}", "walk to {place}"),
        ("pick up {obj}", "grab {obj}"), ("put down {obj}", "set down {obj}"),
        ("move {obj} to {recep}", "transfer {obj} to {recep}"), ("focus on {obj}", "concentrate on {obj}"),
        ("activate {obj}", "switch on {obj}"), ("deactivate {obj}", "switch off {obj}"),
        ("connect {obj} to {other}", "link {obj} to {other}"), ("disconnect {obj}", "unlink {obj}"),
        ("mix {obj}", "stir {obj}")]),
    _rules("sciworld", "R2", "reorder: the target first", [
        ("move {obj} to {recep}", "to {recep} move {obj}"),
        ("pour {obj} into {recep}", "into {recep} pour {obj}"),
        ("dunk {obj} into {recep}", "into {recep} dunk {obj}"),
        ("use {obj} on {other}", "on {other} use {obj}"),
        ("connect {obj} to {other}", "to {other} connect {obj}")]),
)

RULES: dict[str, dict[str, Rule | TokenRule]] = {
    rules[0].family: {r.name: r for r in rules}
    for rules in (HOUSEHOLD_RULES, BABYAI_RULES, PDDL_RULES, TEXTADVENTURE_RULES, SCIWORLD_RULES)
}


def rule_names(family: str) -> list[str]:
    """The perturbations defined for ``family`` (``[]`` if none)."""
    return list(RULES.get(family, {}))


def get_rule(family: str, name: str) -> Rule | TokenRule:
    """The rule ``name`` (``"R1"`` or ``"perturb-v1:R1"``) of ``family``; ValueError for unknown ones."""
    version, _, short = name.rpartition(":")
    if version and version != PERTURB_VERSION:
        raise ValueError(f"perturbation {name!r} is from another rule set; this is {PERTURB_VERSION}")
    if short not in RULES.get(family, {}):
        raise ValueError(f"no perturbation {name!r} for family {family!r}; known: {rule_names(family)}")
    return RULES[family][short]


# ----- prompts ------------------------------------------------------------------------------------
def rewrite_instruction(text: str, rule: Rule | TokenRule) -> str:
    """Rewrite an agent instruction for ``rule``: action templates, example ``Action:`` lines, prose.

    The action list is the block between ``Available actions:`` and the ``- check valid actions`` line;
    concrete commands after ``e.g.`` in it are rewritten too. Observations in the example stay as they are.
    """
    for old, new in rule.prose:
        text = text.replace(old, new)
    lines = text.split("\n")
    try:
        start = lines.index("Available actions:") + 1
        end = next(i for i in range(start, len(lines)) if lines[i].startswith(f"- {CHECK_VALID_ACTIONS}"))
    except (ValueError, StopIteration):
        start = end = 0
    example = lines.index("Here is an example:") if "Here is an example:" in lines else 0
    items: list[list[str]] = []  # action-list items with their continuation lines
    for i, line in enumerate(lines):
        if i > example and line.startswith("Action: "):
            lines[i] = "Action: " + rule.forward(line[len("Action: "):].strip())
        elif start <= i < end:
            line = _rewrite_item(line, rule)
            if line.startswith("- ") or not items:
                items.append([line])
            else:
                items[-1].append(line)
    if items:
        if rule.shuffle:
            random.Random(f"{PERTURB_VERSION}:{rule.family}:{rule.name}").shuffle(items)
        listing = [line for item in items for line in item]
        if rule.note:
            listing.append(f"Note: {rule.note}")
        lines[start:end] = listing
    return "\n".join(lines)


def _rewrite_item(line: str, rule: Rule | TokenRule) -> str:
    head, eg, example = line.partition("e.g. ")
    if eg:  # "go to <object>: walk next to ..., e.g. go to red ball 1"
        line = _rewrite_templates(head, rule) + eg + rule.forward(example.strip())
    else:
        line = _rewrite_templates(line, rule)
    for old, new in rule.placeholders:
        line = line.replace(old, new)
    return line


def _rewrite_templates(line: str, rule: Rule | TokenRule) -> str:
    if isinstance(rule, TokenRule):  # one template a line: "- pick <ball> <room> <gripper>"
        bullet, _, body = line.partition("- ")
        return f"{bullet}- {rule.forward(body.strip())}" if body.strip() else line
    return rule.rewrite_template(line)


# ----- the environment wrapper --------------------------------------------------------------------
