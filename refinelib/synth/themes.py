"""Procedural executable scripts for the grounded teacher: ``generate_script(seed)``.

Each seed picks a theme, a handful of rooms, containers and items, a phrasing for every action role
(verb, word order, placeholder names), and a goal found by a random walk from the initial state, so
every script is solvable; the planner's shortest plan has 2-6 steps.

Keeping training worlds apart from evaluation worlds (the paper's held-out claim depends on it):

* no theme is an evaluation domain: no household rooms or ALFRED receptacles (ALFWorld), no grids,
  balls or doors (BabyAI), no thermometers, boiling, circuits or life cycles (ScienceWorld), no grippers,
  blocks, bars or tyres (PDDL), no adventure rooms or directions (Jericho / text adventures);
* no action template has the *shape* (its words with the placeholders blanked) of an evaluation action
  or of one of its perturbations: ``HELD_OUT_SHAPES`` lists them and ``generate_script`` refuses a clash
  (``tests/test_world.py`` also checks against ``refinelib.envs.perturb``'s rule sets).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from refinelib.synth.world import PLACEHOLDER, World

# Evaluation environments' action shapes, canonical and perturbed ("{}" = any placeholder).
HELD_OUT_SHAPES = frozenset({
    "go to {}", "open {}", "close {}", "take {} from {}", "move {} to {}", "heat {} with {}",
    "cool {} with {}", "clean {} with {}", "use {}", "examine {}", "inventory", "look", "walk to {}",
    "pick up {} from {}",
    "transfer {} to {}", "from {} take {}", "to {} move {}", "take {} out of {}", "move {} onto {}",
    "out of {} pick up {}", "onto {} transfer {}", "inspect {}", "activate {}", "deactivate {}",
    "go through {}", "pickup {}", "grab {}", "drop", "go {}", "head {}", "take {}", "get {}", "drop {}",
    "discard {}", "put {} on {}", "place {} on {}", "insert {} into {}", "stow {} into {}", "get {} from {}",
    "on {} put {}", "into {} insert {}", "unlock {} with {}", "lock {} with {}", "with {} unlock {}",
    "look at {}", "pick up {}", "put down {}", "set down {}", "focus on {}", "pour {} into {}",
    "dunk {} into {}", "use {} on {}", "on {} use {}", "connect {} to {}", "mix {}", "eat {}",
    "put {} in {}", "put {} in/on {}", "toggle {}", "slice {} with {}", "chop {} with {}", "cook {} with {}",
})


def shape(template: str) -> str:
    return " ".join(PLACEHOLDER.sub("{}", template).split())


# Shared phrasing banks per role; {room} {item} {place} {key} are renamed per theme.
BANKS = {
    "go": ["walk over to {room}", "head to the {room}", "enter {room}", "proceed to {room}",
           "travel to {room}", "{room}: go there", "visit the {room}", "make your way to {room}"],
    "take": ["retrieve {item} from {place}", "grab {item} out of {place}", "{place}: retrieve {item}",
             "collect {item} from {place}", "fetch {item} from {place}", "remove {item} from {place}",
             "from {place}, grab {item}", "lift {item} out of {place}"],
    "put": ["store {item} in {place}", "place {item} into {place}", "{place}: deposit {item}",
            "deposit {item} in {place}", "put {item} inside {place}", "into {place}, place {item}",
            "leave {item} in {place}", "return {item} to {place}"],
    "open": ["unlatch {place}", "open up {place}", "{place}: open", "pull open {place}",
             "swing open {place}"],
    "close": ["shut {place}", "close up {place}", "{place}: close", "push {place} shut", "latch {place}"],
    "unlock": ["unlock {place} using {key}", "{place}: unlock with {key}", "apply {key} to {place}",
               "release the lock on {place} with {key}", "with {key}, unlock {place}"],
}


@dataclass(frozen=True)
class Theme:
    """A family of worlds: names, placeholder words, state chains and phrasing overrides."""

    name: str
    slots: dict[str, str]  # role placeholder -> this theme's word, e.g. {"item": "file"}
    rooms: tuple[str, ...]
    boxes: tuple[str, ...]  # openable containers (may be locked)
    surfaces: tuple[str, ...]  # always-open places
    items: tuple[str, ...]
    keys: tuple[str, ...]
    chain: tuple[str, ...]  # item states in order, e.g. ("unsigned", "signed", "archived")
    verbs: tuple[tuple[str, ...], ...]  # per step of the chain: template variants with {item}
    banks: dict[str, list[str]] = field(default_factory=dict)


THEMES = (
    Theme("file_system", {"room": "dir", "item": "file", "place": "folder", "key": "token"},
          rooms=("home", "projects", "srv", "tmp-share"), boxes=("vault", "backups", "secrets"),
          surfaces=("docs", "inbox", "drafts", "reports"),
          items=("report.pdf", "notes.txt", "config.cfg", "build.sh", "data.csv", "logo.png"),
          keys=("admin.key", "otp.token"), chain=("plain", "compressed", "checksummed"),
          verbs=(("compress {item}", "gzip {item}", "zip up {item}"),
                 ("checksum {item}", "sha256sum {item}")),
          banks={"go": ["cd {room}", "change directory to {room}", "chdir {room}"],
                 "take": ["cut {item} from {place}", "yank {item} out of {place}"],
                 "put": ["paste {item} into {place}", "mv {item} {place}"],
                 "open": ["mount {place}", "decrypt {place}"],
                 "close": ["unmount {place}", "encrypt {place}"],
                 "unlock": ["authenticate {place} with {key}", "sudo unlock {place} --key {key}"]}),
    Theme("restaurant_kitchen", {"room": "station", "item": "ingredient", "place": "bin", "key": "key"},
          rooms=("prep line", "pastry corner", "walk-in cooler", "dish pit"),
          boxes=("spice locker", "dry store", "lowboy"), surfaces=("hotel pan", "prep tray", "sheet rack"),
          items=("shallots", "saffron", "brioche dough", "scallops", "basil", "creme fraiche"),
          keys=("locker key",), chain=("whole", "trimmed", "portioned"),
          verbs=(("trim {item}", "clean up {item} for service"),
                 ("portion {item}", "weigh out {item} into portions")),
          banks={"go": ["work at the {room}", "step over to {room}"]}),
    Theme("biotech_lab", {"room": "bay", "item": "sample", "place": "rack", "key": "badge"},
          rooms=("bench bay", "cold room", "sequencing bay", "cell culture suite"),
          boxes=("minus-80 freezer", "biosafety cabinet", "sample safe"),
          surfaces=("tube rack", "ice bucket", "pipette tray"),
          items=("tube A3", "plasmid prep", "serum vial", "cDNA library", "buffer stock"),
          keys=("lab badge",), chain=("unlabelled", "labelled", "spun down"),
          verbs=(("label {item}", "barcode {item}", "tag {item} with its ID"),
                 ("centrifuge {item}", "spin down {item}")),
          banks={"open": ["unseal {place}", "open the lid of {place}"],
                 "close": ["seal {place}", "close the lid of {place}"]}),
    Theme("community_garden", {"room": "plot", "item": "plant", "place": "planter", "key": "key"},
          rooms=("herb plot", "orchard row", "potting shed", "compost yard"),
          boxes=("tool shed chest", "seed bin", "cold frame"),
          surfaces=("raised bed", "wheelbarrow", "potting bench"),
          items=("lavender", "tomato seedling", "fig sapling", "mint cutting", "fern"),
          keys=("shed key", "padlock key"), chain=("dry", "watered", "mulched"),
          verbs=(("water {item}", "give {item} a drink", "soak {item}"),
                 ("mulch {item}", "spread mulch around {item}")),
          banks={"put": ["plant {item} in {place}", "repot {item} into {place}"],
                 "take": ["dig up {item} from {place}", "uproot {item} out of {place}"]}),
    Theme("warehouse", {"room": "zone", "item": "parcel", "place": "bay", "key": "keycard"},
          rooms=("loading dock", "aisle 7", "mezzanine", "returns cage"),
          boxes=("secure cage", "tote bin", "roll container"),
          surfaces=("pallet rack", "conveyor", "staging area"),
          items=("crate 114", "parcel B-22", "tote of bolts", "drum of oil", "carton 9"),
          keys=("keycard", "cage key"), chain=("unscanned", "scanned", "shrink-wrapped"),
          verbs=(("scan {item}", "log {item} in the system"),
                 ("shrink-wrap {item}", "wrap {item} for shipping")),
          banks={"take": ["pick {item} off {place}", "unload {item} from {place}"],
                 "put": ["stack {item} onto {place}", "load {item} onto {place}"]}),
    Theme("library", {"room": "wing", "item": "book", "place": "shelf", "key": "key"},
          rooms=("reading room", "rare books wing", "circulation desk", "periodicals hall"),
          boxes=("archive drawer", "display case", "returns box"),
          surfaces=("cart", "new arrivals shelf", "reference stack"),
          items=("atlas", "folio of maps", "first edition", "poetry anthology", "field guide"),
          keys=("archivist key",), chain=("unstamped", "stamped", "catalogued"),
          verbs=(("stamp {item}", "put the library stamp in {item}"),
                 ("catalogue {item}", "enter {item} in the catalogue")),
          banks={"put": ["shelve {item} in {place}", "reshelve {item} on {place}"]}),
    Theme("clinic", {"room": "ward", "item": "supply", "place": "cabinet", "key": "key"},
          rooms=("triage room", "exam room 2", "pharmacy", "sterilisation room"),
          boxes=("drug cabinet", "supply cupboard", "sharps locker"),
          surfaces=("instrument tray", "trolley", "counter"),
          items=("forceps", "saline bag", "suture kit", "otoscope", "dressing pack"),
          keys=("pharmacy key", "cabinet fob"), chain=("used", "sterilised", "packed"),
          verbs=(("sterilise {item}", "autoclave {item}", "run {item} through the autoclave"),
                 ("pack {item}", "seal {item} in a pouch")),
          banks={"go": ["go over to the {room}", "attend the {room}"]}),
    Theme("woodworking_shop", {"room": "area", "item": "piece", "place": "bench", "key": "key"},
          rooms=("joinery area", "finishing booth", "lumber store", "assembly floor"),
          boxes=("tool chest", "glue cupboard", "hardware drawer"),
          surfaces=("workbench", "clamp rack", "offcut bin"),
          items=("oak plank", "walnut board", "chair leg", "drawer front", "birch panel"),
          keys=("chest key",), chain=("rough", "sanded", "varnished"),
          verbs=(("sand {item}", "smooth {item} with sandpaper"),
                 ("varnish {item}", "apply a coat of varnish to {item}")),
          banks={"unlock": ["unlock {place} with the {key}", "{key} -> unlock {place}"]}),
    Theme("post_office", {"room": "counter", "item": "letter", "place": "sack", "key": "key"},
          rooms=("front counter", "sorting room", "parcel hall", "dispatch bay"),
          boxes=("registered safe", "po box bank", "franking drawer"),
          surfaces=("mail sack", "pigeonhole", "outgoing tray"),
          items=("airmail letter", "small packet", "postcard", "registered letter", "padded envelope"),
          keys=("safe key",), chain=("unweighed", "weighed", "franked"),
          verbs=(("weigh {item}", "put {item} on the scale"), ("frank {item}", "stamp postage on {item}"))),
    Theme("recording_studio", {"room": "room", "item": "tape", "place": "rack", "key": "key"},
          rooms=("control room", "live room", "vocal booth", "tape archive"),
          boxes=("fireproof safe", "flight case", "gear locker"),
          surfaces=("tape shelf", "mixing desk", "patch bay tray"),
          items=("master reel", "drum stems", "demo cassette", "vocal take 3", "synth loop"),
          keys=("studio key",), chain=("raw", "mixed", "mastered"),
          verbs=(("mix down {item}", "balance the levels of {item}"),
                 ("master {item}", "run {item} through mastering")),
          banks={"take": ["pull {item} from {place}", "{place} -> pull {item}"]}),
)


def _rename(template: str, slots: dict[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: "{" + slots.get(m.group(1), m.group(1)) + "}", template)


def _action(rng: random.Random, theme: Theme, role: str, params: dict[str, list[str]], here, pre, add, dele,
            say: str, description: str, variants: list[str] | None = None) -> dict[str, Any]:
    variants = variants or theme.banks.get(role, []) + BANKS[role]
    template = _rename(rng.choice(variants), theme.slots)
    s = theme.slots
    ren = lambda xs: [[_rename(p, s) if p[:1] == "{" else p for p in f] for f in xs]  # noqa: E731
    return {"template": template, "parameters": {s.get(k, k): v for k, v in params.items()},
            "here": [s.get(h, h) for h in here], "pre": ren(pre), "add": ren(add), "del": ren(dele),
            "say": _rename(say, s), "description": description, "role": role}


def _world(rng: random.Random, theme: Theme, seed: int) -> dict[str, Any]:
    rooms = rng.sample(theme.rooms, rng.randint(2, 3))
    boxes = rng.sample(theme.boxes, rng.randint(1, 2))
    places = boxes + rng.sample(theme.surfaces, rng.randint(1, 2))
    rng.shuffle(places)
    items = rng.sample(theme.items, rng.randint(2, 4))
    locked = [b for b in boxes if rng.random() < 0.5][:1]
    keys = [rng.choice(theme.keys)] if locked else []
    init = []
    for i, p in enumerate(places):  # every room gets at least one place when it can
        init.append(["in", p, rooms[i] if i < len(rooms) else rng.choice(rooms)])
    for b in boxes:
        init.append(["state", b, "locked" if b in locked else rng.choice(["open", "closed"])])
    for it in items:
        init.append(["in", it, rng.choice(places)])
        if rng.random() < 0.7:
            init.append(["state", it, theme.chain[0]])
    for k in keys:
        init.append(["in", k, rng.choice([p for p in places if p not in locked])])
    movable = items + keys
    reachable_place = [["not", "state", "{place}", "closed"], ["not", "state", "{place}", "locked"]]
    item_in, held, place_is = ["in", "{item}", "{place}"], ["holding", "{item}"], ["state", "{place}", "*"]
    acts = [
        _action(rng, theme, "go", {"room": rooms}, [], [["not", "at", "player", "{room}"]],
                [["at", "player", "{room}"]], [["at", "player", "*"]],
                "You go to the {room}.", "move to a room"),
        _action(rng, theme, "take", {"item": movable, "place": places}, ["item", "place"],
                [item_in, *reachable_place], [held], [item_in],
                "You take the {item} from the {place}.", "take an item out of a place"),
        _action(rng, theme, "put", {"item": movable, "place": places}, ["item", "place"],
                [held, *reachable_place], [item_in], [held],
                "You put the {item} in the {place}.", "put a held item into a place"),
        _action(rng, theme, "open", {"place": boxes}, ["place"], [["state", "{place}", "closed"]],
                [["state", "{place}", "open"]], [place_is], "You open the {place}.", "open a container"),
        _action(rng, theme, "close", {"place": boxes}, ["place"], [["state", "{place}", "open"]],
                [["state", "{place}", "closed"]], [place_is], "You close the {place}.", "close a container"),
    ]
    if keys:
        acts.append(_action(rng, theme, "unlock", {"place": boxes, "key": keys}, ["place", "key"],
                            [["holding", "{key}"], ["state", "{place}", "locked"]],
                            [["state", "{place}", "closed"]], [place_is],
                            "The {place} is unlocked now (still closed).", "unlock a container with a key"))
    steps = zip(theme.chain, theme.chain[1:], theme.verbs, strict=False)  # chain of n states: n-1 verbs
    for before, after, variants in steps:
        acts.append(_action(rng, theme, f"make_{after}", {"item": movable}, ["item"],
                            [held, ["state", "{item}", before]], [["state", "{item}", after]],
                            [["state", "{item}", "*"]], f"The {{item}} is {after} now.",
                            f"make a held {theme.slots['item']} {after}", variants=list(variants)))
    rng.shuffle(acts)
    return {"theme": theme.name, "seed": seed, "locations": rooms, "start": rng.choice(rooms), "init": init,
            "actions": acts, "goal": [], "goal_text": "", "conditions": []}


def _goal(rng: random.Random, world: World, theme: Theme, steps: int) -> list[list[str]] | None:
    """Facts made true by a short random walk: reachable, hence solvable, by construction."""
    state = world.initial
    for _ in range(steps):
        moves = list(world.successors(state))
        if not moves:
            break
        state = rng.choice(moves)[1]
    changed = [f for f in sorted(state - world.initial)
               if (f[0] == "in" and f[2] not in world.locations) or (f[0] == "state" and f[2] in theme.chain)]
    if not changed:
        return None
    rng.shuffle(changed)
    return [list(f) for f in sorted(changed[:rng.randint(1, 2)])]


def _condition(fact: list[str]) -> str:
    return f"The {fact[1]} is in the {fact[2]}." if fact[0] == "in" else f"The {fact[1]} is {fact[2]}."


GOAL_OPENERS = ("Make sure that", "See to it that", "By the end,", "The request is simple:",
                "Please ensure that")


def generate_script(seed: int) -> dict[str, Any]:
    """A solvable executable script for ``seed`` (deterministic): the paper's keys plus ``Engine``."""
    rng = random.Random(f"themes-{seed}")
    want = rng.randint(2, 6)  # a target plan length, so long plans are as common as short ones
    for attempt in range(200):
        theme = rng.choice(THEMES)
        engine = _world(rng, theme, seed)
        clash = [a["template"] for a in engine["actions"] if shape(a["template"]) in HELD_OUT_SHAPES]
        assert not clash, f"held-out action shape in theme {theme.name}: {clash}"
        world = World(engine)
        goal = _goal(rng, world, theme, rng.randint(want, want + 6))
        if not goal:
            continue
        engine["goal"] = goal
        plan = World(engine).plan()
        if plan is None or not 2 <= len(plan) <= 6 or (len(plan) < want and attempt < 40):
            continue
        conds = [_condition(f) for f in goal]
        said = " and ".join(re.sub(r"^The ", "the ", c[:-1]) for c in conds)
        engine.update(goal_text=f"{rng.choice(GOAL_OPENERS)} {said}.", conditions=conds, plan=plan)
        return World(engine).to_script()
    raise RuntimeError(f"no solvable script for seed {seed}")
