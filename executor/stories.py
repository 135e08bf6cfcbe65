"""An offline generator of short children's stories in the style of TinyStories (Eldan & Li
2023): small vocabulary, a named hero, a place, a problem and its resolution, sometimes a
moral.  Nothing can be downloaded here, so the executor trains on these by default.

Every story is a chain of *beats*; each beat lists alternative sentence templates whose slots
(``{hero}``, ``{He}``, ``{thing}`` ...) are filled from one cast.  The plots share openings
and endings, so a small model sees plenty of repeated structure (its loss keeps falling) and
plenty of variation (it cannot just memorise).  Story ``i`` of a seed does not depend on how many
stories are drawn.  All templates and word lists were written for this project.
"""
from __future__ import annotations

import random
from typing import Sequence

Beat = Sequence[str]  # alternative templates for one step of a story

GIRL_NAMES = ("Lily", "Mia", "Sara", "Anna", "Lucy", "Emma", "Rosa", "Nora", "Zoe", "Ella",
              "Maya", "Ruby", "Daisy", "Hana", "Ivy", "Kate")
BOY_NAMES = ("Tom", "Ben", "Sam", "Max", "Leo", "Jack", "Tim", "Finn", "Omar", "Noah", "Eli",
             "Kai", "Luke", "Paul", "Ravi", "Theo")
PEOPLE = ("girl", "boy")
ANIMALS = ("puppy", "kitten", "bunny", "bear", "duck", "mouse", "frog", "fox", "pig", "lamb")
TRAITS = ("kind", "shy", "brave", "curious", "happy", "silly", "gentle", "busy", "playful",
          "sleepy", "cheerful", "clever")
COLORS = ("red", "blue", "green", "yellow", "pink", "purple", "brown", "shiny", "little", "big")
THINGS = ("ball", "kite", "hat", "toy car", "teddy bear", "boat", "book", "drum", "doll",
          "bucket", "scarf", "whistle")
PLACES = ("park", "garden", "beach", "forest", "farm", "playground", "meadow", "backyard", "pond",
          "hill")
SPOTS = ("a big tree", "a bush", "the bench", "a rock", "the fence", "a pile of leaves",
         "the slide", "a log")
WEATHER = ("sunny", "warm", "bright", "windy", "cool", "quiet")
FOODS = ("bread", "an apple", "some seeds", "a cookie", "a carrot", "some berries")
HUNGRY = ("bird", "duck", "squirrel", "kitten", "puppy", "goose")
FEARS = ("the dark", "loud thunder", "the big dog next door", "deep water", "the tall slide",
         "the noisy vacuum")
TREATS = ("cookies", "a cake", "pancakes", "muffins", "a pie", "soup")
PLANTS = ("flower", "sunflower", "tomato", "pumpkin", "bean", "strawberry")
GIFTS = ("a picture", "a card", "a paper crown", "a necklace of beads", "a little clay pot")

OPENINGS: tuple[Beat, ...] = (
    ("Once upon a time, there was a {trait} {kind} named {hero}.",
     "Once upon a time, in a small town, there lived a {trait} {kind} called {hero}.",
     "There once was a {trait} little {kind}. {His} name was {hero}.",
     "{hero} was a {trait} {kind} who lived near a big {place}."),
    ("{He} loved to play with {his} {color} {thing}.",
     "{His} favorite toy was a {color} {thing}.",
     "Every day, {he} liked to go to the {place} with {his} {parent}.",
     "{He} lived in a little house with {his} {parent}."),
)

ENDINGS: Beat = (
    "From that day on, {hero} smiled every time {he} thought about it.",
    "{hero} went home with a big smile. It was a very good day.",
    "That night, {hero} fell asleep feeling happy and warm.",
    "{hero} was very happy, and {he} never forgot that day.",
    "And they all lived happily ever after.",
)

PLOTS: dict[str, tuple[Beat, ...]] = {
    "lost": (
        ("One {weather} day, {hero} took {his} {thing} to the {place}.",
         "One {weather} morning, {hero} went to the {place} with {his} {color} {thing}."),
        ("{He} played and played until the sun was low.",
         "{He} ran and jumped and laughed all day."),
        ("When it was time to go home, {he} could not find {his} {thing}.",
         "Then {he} looked down. The {thing} was gone!"),
        ("{hero} felt very sad. {He} began to cry.", "{hero} was sad and did not know what to do."),
        ("Just then, {friend} came by. \"Why are you sad?\" {fhe} asked.",
         "{friend} saw {him} and asked, \"What is wrong, {hero}?\""),
        ("\"I lost my {thing},\" said {hero}.", "\"My {thing} is lost,\" {hero} said softly."),
        ("\"Don't worry. I will help you look,\" said {friend}.",
         "\"Let's look for it together,\" said {friend}."),
        ("They looked behind {spot}. They looked under {spot2}.",
         "They looked near {spot} and in the tall grass."),
        ("At last, {friend} found the {thing} under {spot2}!",
         "Soon {hero} saw something {color} next to {spot}. It was the {thing}!"),
        ("{hero} hugged {friend} and said, \"Thank you!\"",
         "\"Thank you for helping me,\" said {hero}, and {he} gave {friend} a big hug."),
        ("{hero} learned that friends help each other.", ""),
    ),
    "stuck": (
        ("One {weather} day, {hero} and {friend} went to the {place} to play with {his} {thing}.",
         "{hero} took {his} {thing} to the {place}. {friend} came too."),
        ("{hero} threw the {thing} up high. It went higher and higher.",
         "The wind was strong, and the {thing} flew up into the air."),
        ("Oh no! The {thing} got stuck in a tall tree.",
         "The {thing} landed on a high branch and stayed there."),
        ("{hero} was sad. \"I can't reach it,\" {he} said.",
         "{hero} jumped and jumped, but the tree was too tall."),
        ("{friend} had an idea. \"Let's get a long stick!\" {fhe} said.",
         "\"Wait,\" said {friend}. \"I know what to do.\""),
        ("{friend} held the stick, and {hero} gave the branch a little shake.",
         "They found a long stick and pushed the branch very gently."),
        ("Down came the {thing}, right into {hero}'s arms!",
         "The {thing} fell down into the soft grass."),
        ("{hero} laughed and said, \"We did it together!\"",
         "\"Thank you, {friend}!\" said {hero} with a big smile."),
        ("They learned that two friends can solve a problem better than one.", ""),
    ),
    "share": (
        ("One day, {hero} and {friend} were playing at the {place}.",
         "{hero} and {friend} went to the {place} to play."),
        ("They both saw a {color} {thing}. They both wanted it.",
         "{friend} had a new {color} {thing}, and {hero} wanted to play with it too."),
        ("\"It is mine!\" said {hero}. \"No, it is mine!\" said {friend}.",
         "{hero} pulled the {thing}, and {friend} pulled it back."),
        ("Soon they were both angry and sad.", "They were both upset, and nobody was having fun."),
        ("{His} {parent} saw them and came over.",
         "{His} {parent} heard the noise and came to see."),
        ("\"Why don't you take turns?\" {pshe} said. \"Sharing is more fun.\"",
         "\"You can share it,\" came the answer. \"First one, then the other.\""),
        ("So {hero} played with the {thing} first, and then {friend} had a turn.",
         "{friend} let {hero} go first, and then they played with it together."),
        ("They laughed and played until it was time to go home.",
         "It was much more fun to play together."),
        ("{hero} learned that sharing makes everyone happy.", "Sharing made them both happy."),
    ),
    "scared": (
        ("{hero} was scared of {fear}.", "There was one thing {hero} did not like: {fear}."),
        ("Every time {he} thought about it, {his} heart went thump, thump.",
         "{He} wanted to be brave, but {he} felt very small."),
        ("One {weather} evening, {he} had to face {fear}.",
         "One day, {he} could not run away from {fear}."),
        ("{hero} wanted to run away and hide.", "{hero} closed {his} eyes and held {his} {thing}."),
        ("{His} {parent} held {his} hand. \"I am here with you,\" {pshe} said.",
         "{friend} stood next to {him}. \"You are braver than you think,\" said {friend}."),
        ("{hero} took a deep breath. One, two, three.",
         "{hero} took a small step, then another step."),
        ("It was not so bad after all!", "Soon {he} was not scared at all."),
        ("{hero} felt proud. \"I did it!\" {he} said.",
         "{hero} smiled a big smile. {He} felt brave and strong."),
        ("{hero} learned that being brave means trying even when you are scared.", ""),
    ),
    "rain": (
        ("{hero} and {friend} wanted to have a picnic at the {place}.",
         "One morning, {hero} made a plan for a picnic at the {place}."),
        ("They packed {food}, a blanket and {his} {thing}.",
         "{His} {parent} helped {him} pack a big basket."),
        ("But then the sky turned gray, and it began to rain.",
         "Just as they were ready to go, big drops of rain began to fall."),
        ("{hero} looked out of the window and felt sad.",
         "\"Now we can't have our picnic,\" {hero} said sadly."),
        ("\"Let's have a picnic inside!\" said {friend}.",
         "{His} {parent} smiled. \"We can have the picnic on the floor,\" {pshe} said."),
        ("They put the blanket on the floor and ate their food.",
         "They made a little tent with chairs and a blanket and ate inside it."),
        ("They told stories and laughed and laughed.",
         "They sang songs while the rain went tap, tap on the window."),
        ("After a while, the sun came out, and there was a big rainbow in the sky.",
         "When the rain stopped, they ran outside to jump in the puddles."),
        ("It was the best picnic ever.",
         "{hero} learned that a rainy day can still be a happy day."),
    ),
    "broken": (
        ("{hero} had a {color} {thing} that {he} loved very much.",
         "{hero} liked to play with {his} {thing} every day."),
        ("One day, {he} threw it too hard, and it hit the wall.",
         "One day, {he} dropped it on the floor by accident."),
        ("Crack! The {thing} was broken.", "Oh no! The {thing} broke into two pieces."),
        ("{hero} started to cry. \"My {thing} is broken!\"",
         "{hero} felt very sad and sat down on the floor."),
        ("{His} {parent} came to see what was wrong.", "{His} {parent} heard {him} and came in."),
        ("\"Let me see,\" {pshe} said. \"Maybe we can fix it.\"",
         "\"Don't be sad,\" said {his} {parent}. \"We can fix it with some glue.\""),
        ("They worked together, and soon the {thing} was as good as new.",
         "{His} {parent} used glue and tape, and {hero} held the pieces still."),
        ("{hero} hugged {his} {parent}. \"Thank you!\" {he} said.",
         "{hero} was so happy to have {his} {thing} back."),
        ("From then on, {hero} was very careful with {his} toys.",
         "{hero} learned to take good care of the things {he} loves."),
    ),
    "hungry": (
        ("One {weather} day, {hero} was sitting at the {place} with {food}.",
         "{hero} went to the {place} with {food} in {his} pocket."),
        ("{He} saw a little {animal} under {spot}.", "A small {animal} came and sat near {him}."),
        ("The {animal} looked thin and sad. It was very hungry.",
         "The {animal} looked at the food with big eyes."),
        ("{hero} wanted to eat the food, but {he} felt sorry for the {animal}.",
         "{hero} thought for a moment."),
        ("\"You can have some,\" {he} said, and {he} gave the {animal} half of {his} food.",
         "{He} shared {his} food with the {animal}."),
        ("The {animal} ate it all up. It looked happy now.",
         "The {animal} ate and ate, and then it made a happy sound."),
        ("The next day, the {animal} came back with a friend.",
         "After that, the {animal} came to visit {hero} every day."),
        ("{hero} was glad {he} had been kind.", "{hero} learned that being kind feels good."),
    ),
    "race": (
        ("{hero} and {friend} liked to run at the {place}. "
         "One day, {friend} said, \"Let's have a race!\"",
         "One day, there was a big race at the {place}. "
         "{hero} and {friend} lined up with the other children."),
        ("\"Ready, set, go!\" Off they ran.",
         "{hero} wanted to win very much. \"Go!\" called a voice."),
        ("{hero} ran very fast. {He} was in front!", "{hero} ran as fast as {he} could."),
        ("But then {he} tripped on a rock and fell down.",
         "Then {his} foot hit a stick, and {he} fell in the grass."),
        ("{His} knee hurt, and {he} wanted to cry.", "{hero} sat on the ground and felt sad."),
        ("{friend} stopped running and came back. \"Are you okay?\" {fhe} asked.",
         "{friend} did not keep running. {fHe} turned around to help."),
        ("{friend} helped {hero} get up.", "{friend} held out a hand and pulled {him} up."),
        ("They walked to the end together, holding hands.", "They finished the race side by side."),
        ("They did not win, but they were both happy.", "Everyone clapped for them."),
        ("{hero} learned that helping a friend is better than winning.", ""),
    ),
    "mess": (
        ("One day, {hero} wanted to paint a picture in the kitchen. "
         "{He} used lots of colors: red, blue and green.",
         "One rainy day, {hero} played with mud and water in the kitchen. "
         "{He} splashed and splashed."),
        ("{He} was having so much fun.", "{He} did not stop to look around."),
        ("Soon there was a big mess everywhere! It was on the floor and on the walls.",
         "When {he} looked around, the whole kitchen was a mess."),
        ("Then {his} {parent} came in. {pHe} looked surprised.",
         "Just then, {he} heard {his} {parent} coming."),
        ("{hero} felt bad. \"I am sorry,\" {he} said. \"I made a mess.\"",
         "{hero} looked down at {his} feet. \"Sorry,\" {he} said quietly."),
        ("\"Thank you for saying sorry,\" said {his} {parent}. \"Let's clean it up together.\"",
         "{His} {parent} smiled. \"Everyone makes mistakes. Now let's clean.\""),
        ("They wiped the floor and washed the walls until everything was clean.",
         "{hero} got a cloth and a bucket and cleaned and cleaned."),
        ("Then they made {treat} together as a treat.",
         "When they were done, {his} {parent} made {treat}."),
        ("{hero} learned to say sorry and to help clean up.",
         "The kitchen was clean, and {hero} was happy."),
    ),
    "seed": (
        ("One spring day, {hero} found a little {plant} seed.",
         "{His} {parent} gave {him} a tiny {plant} seed."),
        ("{He} dug a small hole in the garden and put the seed inside.",
         "{He} planted it in a pot by the window."),
        ("Every day, {he} gave it water and waited.",
         "{He} watered it every morning and every night."),
        ("But nothing happened. {hero} was sad. \"Why won't it grow?\" {he} asked.",
         "Days went by, and {hero} did not see anything. {He} felt cross."),
        ("\"Be patient,\" said {his} {parent}. \"Good things take time.\"",
         "{friend} said, \"Seeds need time, sun and water. Keep trying.\""),
        ("So {hero} kept watering it, day after day.", "So {hero} waited and sang to the seed."),
        ("One morning, {he} saw a tiny green leaf!",
         "Then one day, a little green shoot came up out of the dirt."),
        ("The {plant} grew bigger and bigger.", "Soon there was a big, beautiful {plant}."),
        ("{hero} was so proud. {He} learned that waiting can be worth it.",
         "{hero} showed it to everyone and smiled."),
    ),
    "castle": (
        ("One {weather} day, {hero} and {friend} went to the beach.",
         "{hero} went to the beach with {friend}, a bucket and a little spade."),
        ("{He} built a big sandcastle with tall towers.",
         "They made a sandcastle with a wall and a little door."),
        ("Then a big wave came and knocked the castle down.",
         "Splash! A wave rolled in, and the castle was gone."),
        ("{hero} was sad. All {his} work was gone.", "\"Oh no!\" cried {hero}. \"My castle!\""),
        ("\"Let's build it again,\" said {friend}. \"This time, far from the water.\"",
         "{friend} said, \"We can make a new one, even bigger!\""),
        ("They worked hard and built a new castle, away from the waves.",
         "They carried sand and water and built it again."),
        ("The new castle was even better than the first one.",
         "This time the castle stood strong and tall."),
        ("{hero} learned to try again when things go wrong.",
         "They put a shell on top and cheered."),
    ),
    "new_friend": (
        ("One day, a new {fkind} came to the {place}. {fHe} was all alone.",
         "At the {place}, {hero} saw a {fkind} sitting alone under {spot}."),
        ("The {fkind} looked shy and a little sad.", "Nobody was playing with the new {fkind}."),
        ("{hero} wanted to say hello, but {he} felt shy too.",
         "{hero} thought, \"Maybe I can be a friend.\""),
        ("{He} walked over and said, \"Hi! My name is {hero}. What is your name?\"",
         "{He} took a deep breath and said hello."),
        ("\"I am {friend},\" said the {fkind} with a small smile.",
         "\"My name is {friend},\" came a soft answer."),
        ("\"Do you want to play with my {thing}?\" asked {hero}.",
         "{hero} asked {friend} to play with {his} {thing}."),
        ("They played all afternoon and laughed a lot.",
         "Soon they were running and playing together."),
        ("{friend} was not sad anymore.", "Now {friend} had a new friend."),
        ("{hero} learned that a small hello can make a big friend.", ""),
    ),
    "lost_way": (
        ("One day, {hero} saw a pretty butterfly at the {place}. {He} followed it far, far away.",
         "{hero} went for a walk in the forest. {He} walked and walked and did not look back."),
        ("When {he} stopped, {he} did not know where {he} was.",
         "Soon the trees all looked the same. {hero} was lost."),
        ("{hero} felt scared. \"I want to go home,\" {he} said.",
         "{hero} sat down on a log and felt afraid."),
        ("Then a wise old owl flew down. \"Are you lost?\" it asked.",
         "Just then, {friend} came along the path."),
        ("\"Follow the little river,\" came the answer. \"It goes to your house.\"",
         "\"I know the way. Come with me,\" said the kind voice."),
        ("{hero} walked next to the river, and soon {he} saw {his} house.",
         "They walked together until {hero} could see {his} home."),
        ("{His} {parent} gave {him} a big hug.",
         "{His} {parent} was waiting at the door with open arms."),
        ("{hero} learned to stay close to home.", "{hero} was happy to be home again."),
    ),
    "gift": (
        ("It was {his} {parent}'s birthday, and {hero} wanted to give {gift}.",
         "{hero} wanted to make something special for {his} {parent}."),
        ("But {he} had no money to buy anything.", "{He} did not know what to make."),
        ("{hero} thought and thought.", "{He} asked {friend} for help."),
        ("Then {he} had an idea. \"I will make {gift}!\"",
         "\"You can make {gift},\" said {friend}."),
        ("{He} worked very hard all morning.", "{He} used paper, glue and lots of colors."),
        ("When it was done, {he} wrapped it up with a {color} ribbon.",
         "It was not perfect, but it was made with love."),
        ("{His} {parent} opened the gift and smiled. \"I love it!\" {pshe} said.",
         "When {his} {parent} saw it, {pshe} gave {hero} a big hug."),
        ("{hero} learned that the best gifts come from the heart.",
         "{hero} felt warm and proud inside."),
    ),
}


def _character(rng: random.Random, kinds: Sequence[str], avoid: str = "") -> dict[str, str]:
    kind = rng.choice(kinds)
    girl = kind == "girl" or (kind != "boy" and rng.random() < 0.5)
    name = rng.choice([n for n in (GIRL_NAMES if girl else BOY_NAMES) if n != avoid])
    he, him, his = ("she", "her", "her") if girl else ("he", "him", "his")
    return dict(name=name, kind=kind, he=he, him=him, his=his)


def _cast(rng: random.Random) -> dict[str, str]:
    """The slot values of one story."""
    hero = _character(rng, PEOPLE if rng.random() < 0.6 else ANIMALS)
    friend = _character(rng, PEOPLE if hero["kind"] in PEOPLE else ANIMALS, avoid=hero["name"])
    mom = rng.random() < 0.5
    spot, spot2 = rng.sample(SPOTS, 2)
    return dict(
        hero=hero["name"], kind=hero["kind"], he=hero["he"], him=hero["him"], his=hero["his"],
        He=hero["he"].capitalize(), His=hero["his"].capitalize(), trait=rng.choice(TRAITS),
        friend=friend["name"], fkind=friend["kind"], fhe=friend["he"], fhim=friend["him"],
        fHe=friend["he"].capitalize(), parent="mom" if mom else "dad", pshe="she" if mom else "he",
        pHe="She" if mom else "He", place=rng.choice(PLACES), thing=rng.choice(THINGS),
        color=rng.choice(COLORS), spot=spot, spot2=spot2, weather=rng.choice(WEATHER),
        food=rng.choice(FOODS), animal=rng.choice(HUNGRY), fear=rng.choice(FEARS),
        treat=rng.choice(TREATS), plant=rng.choice(PLANTS), gift=rng.choice(GIFTS))


def _tell(rng: random.Random, beats: Sequence[Beat], cast: dict[str, str]) -> str:
    sentences = (rng.choice(beat).format(**cast) for beat in beats)
    return " ".join(s for s in sentences if s)


def story(seed: int, index: int) -> str:
    """Story ``index`` of ``seed``: an opening, one plot, sometimes a closing line."""
    rng = random.Random(f"{seed}:{index}")
    cast = _cast(rng)
    plot = PLOTS[rng.choice(sorted(PLOTS))]
    paragraphs = [_tell(rng, OPENINGS, cast), _tell(rng, plot, cast)]
    if rng.random() < 0.6:
        paragraphs.append(_tell(rng, (ENDINGS,), cast))
    return "\n\n".join(paragraphs)


def generate_stories(n: int, seed: int = 0) -> list[str]:
    """``n`` stories, the same ones for the same seed (and a prefix of them for a smaller n)."""
    return [story(seed, i) for i in range(n)]


__all__ = ["generate_stories", "story", "PLOTS"]
