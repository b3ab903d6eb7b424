"""Build the shipped open-ended chat prompt sets, deterministically.

    python tools/data/build_chat.py [--out-dir DIR]

writes ``chat_train.jsonl`` and ``chat_heldout.jsonl`` (default: src/sparring/data/, where the package
ships them) and prints how many requests of each task kind each set has. This script is part of the
source tree, not of the installed package: nothing runs it at run time. It needs sparring importable
(installed, or PYTHONPATH=src).

Each line is ``{"id": "chat-train-0001", "messages": [{"role": "user", "content": "..."}]}`` (OpenAI
chat format). The requests are open-ended (explanations, advice, how-to steps, comparisons, short
creative writing, emails, summaries of a given passage, rewrites of a given sentence, brainstorming,
word problems, definitions, pros and cons, recommendations, code questions, general questions) and
carry no verifiable IFEval-style constraint: they are for judges that score a response as a whole (a
reward model, PairRM, an LLM judge), not for IFEval scoring.

Every request is written in this file. Most are a *phrasing* of a task kind ("What are some tips for
{x}?", "I'm struggling with {x}. Any advice?", ...) filled with one *item* ("keeping houseplants
alive"); the rest (word problems, general questions, some code questions, the two-turn conversations)
are written whole. Every kind has its own training and held-out item lists, and they are disjoint, so
no held-out request occurs in training. Each item is used once per set, so no request repeats.

About 10% of the rows get a system turn first (a persona or a tone, nothing a checker could verify),
and a few rows are two-turn conversations (user, assistant, user) ending on the user's turn.

The only randomness is ``random.Random(SEED)`` (training) and ``random.Random(SEED + 1)`` (held-out):
which phrasing each item gets, the order of the rows, and which rows get which system turn. Output is
byte-identical on every run (the test checks the shipped files against a fresh build).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sparring.errors import UserError

SEED = 2718

# the shipped sets are package data of sparring.data; this script lives in tools/data/ of the same tree
DATA_DIR = Path(__file__).resolve().parents[2] / "src" / "sparring" / "data"
TRAIN_FILE = "chat_train.jsonl"
HELDOUT_FILE = "chat_heldout.jsonl"
TRAIN_ID_PREFIX = "chat-train-"
HELDOUT_ID_PREFIX = "chat-heldout-"

SYSTEM_SHARE = 0.10  # share of rows (rounded) that get a system turn


@dataclass(frozen=True)
class Group:
    """Requests of one task kind: each item (a dict of the fields the phrasings use, or a string for
    the field ``x``) is written out with one of the phrasings. Several groups may share a kind."""

    kind: str
    phrasings: tuple[str, ...]
    train: tuple
    heldout: tuple


# --------------------------------------------------------------------------------------------
# Task kinds: phrasings and items. Items are short so that a small model can answer in about 100
# tokens; training and held-out items of a group never overlap.
# --------------------------------------------------------------------------------------------

EXPLANATION = Group(
    kind="explanation",
    phrasings=(
        "Explain {x}.",
        "Can you explain {x} in simple terms?",
        "I've always wondered {x}. Could you explain it briefly?",
        "Help me understand {x}.",
        "In plain language, explain {x}.",
        "Explain {x} to someone with no background in the subject.",
    ),
    train=(
        "why the sky is blue", "how rainbows form", "why we have seasons",
        "how a refrigerator keeps food cold", "why bread rises", "how bees make honey",
        "why leaves change colour in autumn", "how a compass works", "why the moon has phases",
        "how paper gets recycled", "why ice floats on water", "how bicycle gears make pedalling easier",
        "how interest on a savings account grows", "how airplanes stay in the air", "why the ocean is salty",
        "how a search engine finds web pages", "what causes thunder", "how tides work",
        "why cutting onions makes people cry", "how a thermostat works", "why some animals hibernate",
        "how the printing press changed the spread of ideas", "how a rechargeable battery stores energy",
        "why sleep matters for memory",
    ),
    heldout=(
        "how a microwave oven heats food", "why stars twinkle", "how volcanoes form",
        "why roads mattered so much to the Roman Empire", "how fish breathe underwater",
        "how a camera lens focuses light", "why bread dough needs kneading", "how Wi-Fi sends data through the air",
    ),
)  # fmt: skip

ADVICE = Group(
    kind="advice",
    phrasings=(
        "What are some tips for {x}?",
        "Give me a few practical tips for {x}.",
        "I'm struggling with {x}. Any advice?",
        "What's your best advice for {x}?",
        "Do you have any suggestions for {x}?",
    ),
    train=(
        "staying focused while working from home", "keeping houseplants alive", "saving money on groceries",
        "getting up earlier in the morning", "making small talk at a party", "keeping a tidy desk",
        "sticking to a new exercise routine", "learning a new language as an adult",
        "packing light for a week-long trip", "preparing for a job interview",
        "calming my nerves before a presentation", "reading more books", "cutting down on screen time in the evening",
        "making friends after moving to a new city", "keeping track of a monthly budget",
        "cooking for one person without wasting food", "getting kids to help with chores",
        "taking better photos with a phone", "writing a clear cover letter", "remembering people's names",
        "staying motivated while studying for exams", "running a short and useful meeting",
    ),
    heldout=(
        "keeping a vegetable garden going through a hot summer", "organising a cluttered closet",
        "staying warm in a drafty apartment", "sleeping well in a noisy neighbourhood",
        "giving helpful feedback to a coworker", "planning meals for a busy week", "keeping a journal every day",
    ),
)  # fmt: skip

HOW_TO = Group(
    kind="how-to",
    phrasings=(
        "How do I {x}?",
        "What are the steps to {x}?",
        "Walk me through how to {x}.",
        "Can you list the basic steps to {x}?",
        "Explain step by step how to {x}.",
    ),
    train=(
        "make a cup of pour-over coffee", "fix a flat bicycle tyre", "plant tomato seeds", "make a paper airplane",
        "clean a cast-iron pan", "tie a bowline knot", "set up a simple weekly budget", "brew loose-leaf tea",
        "make pancakes from scratch", "change a light bulb safely", "back up the photos on my phone",
        "write a good thank-you card", "start a compost bin at home", "wash a wool sweater by hand",
        "make a simple salad dressing", "pitch a tent", "create a strong password that is easy to remember",
        "hang a picture frame straight", "fold a fitted sheet", "make cold brew coffee",
        "get ready for a long flight", "sew a button back onto a shirt",
    ),
    heldout=(
        "repot a houseplant", "make a basic tomato sauce", "descale a kettle", "iron a dress shirt",
        "make popcorn on the stove", "set up a bird feeder", "pack a suitcase so my clothes don't wrinkle",
    ),
)  # fmt: skip


def _pair(a: str, b: str) -> dict[str, str]:
    return {"a": a, "b": b, "A": a[:1].upper() + a[1:]}


COMPARISON = Group(
    kind="comparison",
    phrasings=(
        "Compare {a} and {b}.",
        "What is the difference between {a} and {b}?",
        "How are {a} and {b} similar, and how are they different?",
        "{A} or {b}: what are the main differences?",
        "Can you briefly compare {a} with {b}?",
    ),
    train=tuple(
        _pair(a, b)
        for a, b in (
            ("tea", "coffee"), ("a laptop", "a tablet"), ("running", "swimming"), ("a crocodile", "an alligator"),
            ("baking soda", "baking powder"), ("renting a home", "buying one"), ("a virus", "a bacterium"),
            ("an ebook", "a paper book"), ("frogs", "toads"), ("a lake", "a pond"), ("butter", "margarine"),
            ("a credit card", "a debit card"), ("a hurricane", "a tornado"), ("a violin", "a viola"),
            ("Python lists", "Python tuples"), ("travelling by train", "travelling by plane"),
            ("a simile", "a metaphor"), ("the Olympic Games", "the football World Cup"), ("stocks", "bonds"),
            ("watercolour painting", "oil painting"), ("a mountain bike", "a road bike"),
        )
    ),
    heldout=tuple(
        _pair(a, b)
        for a, b in (
            ("a cheetah", "a leopard"), ("a town", "a city"), ("ice cream", "frozen yogurt"),
            ("a podcast", "a radio show"), ("a canoe", "a kayak"), ("walking to work", "cycling to work"),
            ("an orchestra", "a band"),
        )
    ),
)  # fmt: skip

# Short creative writing, in two groups: forms that need a character (a fable needs someone to learn
# the lesson) and forms that suit a scene or a mood.
CREATIVE_CHARACTERS = Group(
    kind="creative writing",
    phrasings=(
        "Write a very short story about {x}.",
        "Write a short fable about {x}, with a lesson at the end.",
        "Write a limerick about {x}.",
        "Write a short, funny story about {x}.",
        "Write the opening lines of a story about {x}.",
        "Write a short poem about {x}.",
    ),
    train=(
        "a cat who is afraid of mice", "a lost umbrella looking for its owner", "a robot learning to bake bread",
        "a dog waiting for the school bus", "a snail in a hurry", "a shy dragon", "a penguin who wants to fly",
        "a squirrel hiding acorns for winter", "a tomato that insists it is a fruit",
        "a lighthouse keeper on her last night on duty", "a bicycle that remembers every ride",
        "a team winning its first match", "a sunflower that follows the moon",
    ),
    heldout=(
        "a fox crossing a frozen river", "an owl who cannot stay awake at night", "a cactus who wants a friend",
        "a baker's first morning in a new town",
    ),
)  # fmt: skip

CREATIVE_SCENES = Group(
    kind="creative writing",
    phrasings=(
        "Write a short poem about {x}.",
        "Write a haiku about {x}.",
        "Write a four-line poem about {x}.",
        "Describe {x} in a short, vivid paragraph.",
        "Write a few lines of a song about {x}.",
        "Write the opening lines of a story that begins with {x}.",
    ),
    train=(
        "a rainy afternoon in the city", "the first snow of winter", "the smell of fresh coffee in the morning",
        "a kite stuck in a tree", "an old library at midnight", "a grandmother's recipe book",
        "a train crossing the desert at night", "the last day of the summer holidays",
        "a picnic interrupted by ants", "the moon over a sleeping town", "a garden on a city rooftop",
        "a letter found in an old coat", "a quiet morning at the beach",
    ),
    heldout=(
        "a lantern festival", "the sound of rain on a tin roof", "a hot air balloon over a valley",
        "a forgotten chess piece",
    ),
)  # fmt: skip

MESSAGE = Group(
    kind="email or message",
    phrasings=(
        "Write a short email {x}.",
        "Draft a brief message {x}.",
        "Help me write a quick note {x}.",
        "Can you write a friendly text message {x}?",
        "Write a polite email {x}.",
    ),
    train=(
        "to my manager asking for next Friday off", "to a coworker asking to move our meeting to Thursday",
        "thanking a neighbour for watering my plants while I was away",
        "to a friend congratulating her on her new job", "to a teacher asking how my son is doing in class",
        "to my landlord reporting that the kitchen tap is leaking",
        "inviting my neighbours to a small garden party on Saturday",
        "to a customer apologising that their order will arrive two days late",
        "to a hotel asking whether they have a room with a view of the lake",
        "welcoming a new member to our book club", "reminding my team about tomorrow's deadline",
        "to a friend saying I can't make it to dinner tonight", "thanking a speaker for a great talk at our school",
        "asking a local bakery whether they make birthday cakes to order",
        "asking to cancel my gym membership", "to a colleague who is leaving, wishing them well",
        "to a plumber asking for a quote to fix a leaking shower", "telling my family about my new address",
        "to a restaurant booking a table for six on Sunday evening",
        "following up on a job application I sent two weeks ago",
        "asking my neighbour to keep the music down after ten at night",
        "to a volunteer thanking them for helping at the charity run",
    ),
    heldout=(
        "to a librarian asking to extend my book loan", "to a friend recommending a film I just saw",
        "to my team announcing that the office will be closed on Monday",
        "thanking my host family after a stay abroad", "to a shop asking whether a jacket is back in stock",
        "inviting my cousin to visit during the summer", "to a client confirming our call at three o'clock tomorrow",
    ),
)  # fmt: skip

SUMMARY = Group(
    kind="summary",
    phrasings=(
        "Summarize this passage briefly:\n\n{x}",
        "What is the main point of the following text?\n\n{x}",
        "Sum up this paragraph for me in plain words:\n\n{x}",
        "Here is a short text:\n\n{x}\n\nCan you summarize it?",
        "Give me a short summary of this:\n\n{x}",
    ),
    train=(
        (
            "Community gardens turn empty city lots into shared green spaces. Neighbours rent small plots, grow "
            "vegetables and flowers, and often swap seeds and advice. Besides fresh food, the gardens give people a "
            "reason to meet and talk, which many say makes their street feel friendlier."
        ),
        (
            "The first bicycles, built in the early 1800s, had no pedals: riders pushed themselves along with their "
            "feet. Pedals on the front wheel came later, and then huge front wheels to go faster. The modern design, "
            "with two wheels of the same size and a chain to the back wheel, made cycling safer and spread it around "
            "the world."
        ),
        (
            "Many people check their phones within minutes of waking up. Researchers who study habits suggest that "
            "starting the day with messages and news can make mornings feel rushed. Some recommend a short "
            "screen-free routine instead, such as stretching, making breakfast or stepping outside for a few minutes."
        ),
        (
            "Honeybees do not only make honey. As they move from flower to flower, they carry pollen that helps "
            "plants produce fruit and seeds. Farmers growing apples, almonds and many other crops depend on this "
            "work, which is why the health of bee colonies matters far beyond the hive."
        ),
        (
            "Our town library is changing how it works. Starting next month, members can borrow tools, board games "
            "and musical instruments as well as books. The library hopes the new collection will bring in people "
            "who have not visited in years."
        ),
        (
            "Sourdough bread is made without packaged yeast. Instead, bakers keep a starter, a mix of flour and "
            "water in which wild yeast and bacteria grow. The starter makes the dough rise slowly and gives the "
            "bread its slightly sour taste and chewy crust."
        ),
        (
            "Remote work has grown quickly over the past few years. Many employees enjoy skipping the commute and "
            "having more control over their day. Others miss quick chats with colleagues and find it harder to "
            "separate work from home life."
        ),
        (
            "The Great Wall of China is not a single wall. It is a series of walls and forts built by different "
            "dynasties over many centuries, mostly to guard against raids from the north. Much of what visitors see "
            "today was built or rebuilt during the Ming dynasty."
        ),
        (
            "Wetlands are often seen as useless swamps, but they do important work. They soak up rainwater and "
            "reduce flooding, filter pollution out of the water, and shelter birds, fish and insects. Many countries "
            "now protect them after losing large areas to farming and building."
        ),
        (
            "A good night's sleep helps the body recover and the mind store what it learned during the day. Most "
            "adults need around seven to nine hours. Keeping a regular bedtime and a dark, quiet bedroom are simple "
            "habits that help many people sleep better."
        ),
        (
            "The team had lost its first five games of the season. Instead of changing players, the new coach spent "
            "two weeks practising passing and teamwork. The team went on to win seven of its next ten games and "
            "finished in the middle of the table."
        ),
        (
            "Jazz began in New Orleans in the early twentieth century, mixing blues, ragtime and brass band music. "
            "Its musicians valued improvisation, inventing melodies on the spot. From there it spread to Chicago "
            "and New York, and eventually around the world."
        ),
        (
            "Credit card interest can add up quickly. If you pay only the minimum each month, the rest of the "
            "balance keeps collecting interest, and a small purchase can end up costing much more than its price. "
            "Paying the full balance every month avoids interest altogether."
        ),
        (
            "Our company will move to a new office on the fifth floor of the Riverside building on the 1st of June. "
            "Desks will be packed on the Friday before, and the movers will handle all the boxes. Staff should take "
            "home any personal items they want to keep safe during the move."
        ),
        (
            "Sea otters often float on their backs and use stones as tools to crack open shellfish. They sometimes "
            "hold paws while resting so they do not drift apart. Their thick fur, the densest of any animal, keeps "
            "them warm in cold water."
        ),
        (
            "Many museums now offer free entry one evening a month. Organisers say these nights attract younger "
            "visitors and families who might otherwise find tickets too expensive. Some museums add music, talks and "
            "workshops to make the evenings feel like an event."
        ),
        (
            "Composting turns food scraps and garden waste into rich soil. Microbes break the material down over a "
            "few months, helped by air, water and a mix of green and brown waste. Home gardeners use the finished "
            "compost to feed their plants instead of buying fertiliser."
        ),
        (
            "The printing press, developed in Europe by Johannes Gutenberg around 1440, made it possible to copy "
            "books quickly and cheaply. Before it, books were copied by hand and were rare and expensive. Within a "
            "few decades, printed books and pamphlets were carrying news and ideas across the continent."
        ),
    ),
    heldout=(
        (
            "Coral reefs cover a tiny part of the ocean floor but are home to about a quarter of all marine "
            "species. They protect coastlines from waves and support fishing and tourism. Warmer seas can make "
            "corals lose the algae they depend on, turning them white in what is called bleaching."
        ),
        (
            "The school will hold its annual science fair on the 14th of March in the main hall. Students in every "
            "year group can enter, alone or in pairs. Projects must be registered with a teacher by the end of "
            "February."
        ),
        (
            "Walking is one of the simplest ways to stay active. It needs no equipment, can be done almost anywhere "
            "and is gentle on the joints. Even a short daily walk can lift people's mood and help them feel more "
            "energetic."
        ),
        (
            "Before refrigerators, people kept food cold with ice cut from frozen lakes in winter. The ice was "
            "stored in thick-walled ice houses, packed in sawdust, and could last well into the summer. It was "
            "delivered to homes and kept in wooden iceboxes."
        ),
        (
            "Many cities are adding bike lanes separated from car traffic. Supporters say the lanes make cycling "
            "safer and encourage people to leave the car at home. Some shop owners worried about losing parking "
            "spaces, but studies in several cities found that local sales held steady or grew."
        ),
        (
            "Wolves live and hunt in packs, usually a family of parents and their young. They communicate with "
            "howls, body language and scent. When wolves were brought back to Yellowstone National Park in 1995, "
            "they changed how elk moved through the park, and some plants began to grow back."
        ),
    ),
)


def _tone(adj: str, s: str) -> dict[str, str]:
    return {"adj": adj, "s": s}


# Rewriting a given sentence: a change of tone, a grammar fix, or simpler words.
REWRITE_TONE = Group(
    kind="rewrite",
    phrasings=(
        'Rewrite this sentence to sound more {adj}: "{s}"',
        'Can you make this sentence more {adj}? "{s}"',
        "Please rephrase the following so it sounds more {adj}.\n\n{s}",
        'How could I say this in a more {adj} way? "{s}"',
    ),
    train=tuple(
        _tone(adj, s)
        for adj, s in (
            ("formal", "Hey, can you send me that report thing by tomorrow?"),
            ("friendly", "Your order has been received and will be processed."),
            ("polite", "Move your car, it's blocking my driveway."),
            ("professional", "Sorry I'm late with this, I totally forgot about it."),
            ("positive", "The weather ruined our picnic, so we had to eat inside."),
            (
                "concise",
                (
                    "At this point in time, we are currently in the process of reviewing all of the "
                    "applications that we have received."
                ),
            ),
            ("confident", "I think maybe I could possibly be a good fit for this role, if that's okay."),
            ("casual", "We kindly request your attendance at the celebration of Maria's birthday."),
            ("formal", "The meeting was a mess and nobody knew what was going on."),
            ("friendly", "Payment is due within thirty days of the invoice date."),
            ("polite", "I need the answer today."),
            (
                "concise",
                (
                    "In my personal opinion, I believe that we should probably think about maybe starting "
                    "the project a little bit earlier."
                ),
            ),
            ("positive", "We didn't win, we only came second out of twenty teams."),
            ("professional", "That idea won't work, we tried it before and it was a disaster."),
        )
    ),
    heldout=tuple(
        _tone(adj, s)
        for adj, s in (
            ("formal", "Can't come to the thing on Monday, sorry."),
            ("friendly", "Visitors must sign in at the front desk."),
            ("polite", "Stop sending me so many emails."),
            (
                "concise",
                (
                    "We would like to take this opportunity to let you know that our shop will be closed "
                    "for the holiday."
                ),
            ),
            ("confident", "I'm not sure, but I guess my plan might work."),
        )
    ),
)

REWRITE_GRAMMAR = Group(
    kind="rewrite",
    phrasings=(
        'Fix the grammar in this sentence: "{x}"',
        'Can you correct the mistakes in this sentence? "{x}"',
        "Please proofread this sentence and fix any errors:\n\n{x}",
    ),
    train=(
        "Me and him goes to the market every saturday.",
        "Their going to the park tomorrow, weather or not it rains.",
        "The list of items are on the desk, next to the books that was delivered yesterday.",
    ),
    heldout=("She don't like apples, but she eat oranges every day.",),
)

REWRITE_SIMPLER = Group(
    kind="rewrite",
    phrasings=(
        'Rewrite this sentence in simpler words: "{x}"',
        'How would you say this so that a child could understand it? "{x}"',
        "Make this sentence easier to read:\n\n{x}",
    ),
    train=(
        "The municipality has implemented measures to ameliorate traffic congestion in the city centre.",
        "Photosynthesis is the process by which plants convert light energy into chemical energy.",
        "Due to unforeseen circumstances, the event has been postponed until further notice.",
    ),
    heldout=("The committee reached a consensus after protracted deliberations.",),
)

BRAINSTORM = Group(
    kind="brainstorming",
    phrasings=(
        "Brainstorm some ideas for {x}.",
        "Give me a few ideas for {x}.",
        "I need ideas for {x}. What can you come up with?",
        "List some creative ideas for {x}.",
        "What are some good ideas for {x}?",
    ),
    train=(
        "a rainy Saturday with kids", "a birthday present for a friend who loves cooking",
        "naming a small neighbourhood bakery", "a theme for a school fundraiser",
        "a day trip to the countryside", "using up leftover rice", "a short team-building activity at work",
        "a blog about houseplants", "decorating a small balcony", "a science project for a twelve-year-old",
        "making a long car journey more fun", "a picnic menu", "a cheap date night at home",
        "reusing empty glass jars", "a costume for a book-themed party", "naming a pet goldfish",
        "a side project to practise programming", "activities for a family reunion", "a weekly game night",
        "using less plastic at home", "a slogan for a neighbourhood clean-up day",
        "a small gift for a teacher at the end of the school year",
    ),
    heldout=(
        "a garden party on a tight budget", "naming a podcast about travel",
        "things to do in the evening without screens", "a class trip for ten-year-olds",
        "a welcome gift for a new neighbour", "healthy lunches to bring to work", "a mural on a school wall",
    ),
)  # fmt: skip

# Word problems and small puzzles are written whole; the phrasings only vary how they are asked.
REASONING = Group(
    kind="word problem",
    phrasings=(
        "{x}",
        "Quick math question: {x}",
        "{x} Please explain your answer.",
        "Can you help me solve this? {x}",
        "{x} Show your working briefly.",
        "Here's a little puzzle. {x}",
    ),
    train=(
        "A bakery sells muffins for $2 each. How much do 7 muffins cost?",
        "Sam shares 24 stickers equally among his 4 friends and keeps none. How many stickers does each friend get?",
        "A train leaves at 9:15 and arrives at 11:40. How long is the journey?",
        "A recipe for 4 people needs 300 grams of pasta. How much pasta do I need for 6 people?",
        "A shirt costs $40 and is on sale for 25% off. What is the sale price?",
        "Maria reads 15 pages a day. How many days will it take her to finish a 210-page book?",
        "I have a 5-litre jug and a 3-litre jug and a tap. How can I measure exactly 4 litres of water?",
        "Tom is older than Ana, and Ana is older than Leo. Who is the youngest?",
        "A garden is 8 metres long and 5 metres wide. What is its area?",
        "If today is Wednesday, what day of the week will it be in 10 days?",
        "A car travels at 60 kilometres per hour. How far does it go in 2.5 hours?",
        "There are 30 students in a class and 12 of them are girls. What fraction of the class are boys?",
        "Three friends split a restaurant bill of $54 equally. How much does each of them pay?",
        "A farmer has only chickens and cows. Together they have 10 heads and 28 legs. How many cows are there?",
        "I save $15 a week. How many weeks will it take me to save $180?",
        "A clock shows exactly 3:00. What is the angle between the hour hand and the minute hand?",
        "All of Lena's pets are cats. Lena has a pet named Milo. What kind of animal is Milo?",
        "An egg box holds 12 eggs. How many boxes do I need for 100 eggs?",
        "Which is the better deal: 3 notebooks for $4.50 or 5 notebooks for $7?",
        "Five workers pack five boxes in five minutes. How long do ten workers take to pack ten boxes?",
        (
            "My phone battery is at 85% and drops 10 percentage points every hour. After how many hours will it "
            "first be below 30%?"
        ),
        "Jo runs 3 kilometres on Monday and 1 kilometre more each day after that. How far does she run on Friday?",
        "A film starts at 7:45 pm and lasts 2 hours and 20 minutes. What time does it end?",
        "I have three 20-cent coins and four 5-cent coins. How much money do I have?",
    ),
    heldout=(
        "A pizza is cut into 8 slices. If 3 people each eat 2 slices, how many slices are left?",
        "A bus ticket costs $2.50. How much do 6 tickets cost?",
        "A rectangle has a perimeter of 20 centimetres and a width of 4 centimetres. What is its length?",
        "Nina is taller than Omar but shorter than Priya. Who is the tallest of the three?",
        "I plant 4 rows of tomato plants with 9 plants in each row. How many plants is that?",
        "A water tank holds 500 litres and loses 20 litres a day. How many days until it is empty?",
        "A concert ticket costs $30 plus a $4 booking fee per ticket. How much do 3 tickets cost in total?",
        "It is 10:50 now. What time will it be in 45 minutes?",
    ),
)


def _term(t: str) -> dict[str, str]:
    """A term with its article ("a metaphor") and without it ("metaphor")."""
    bare = t.split(" ", 1)[1] if t.startswith(("a ", "an ")) else t
    return {"t": t, "w": bare}


DEFINITION = Group(
    kind="definition",
    phrasings=(
        "What is {t}?",
        'What does "{w}" mean?',
        'Define "{w}" in plain words.',
        "Give me a simple definition of {t}.",
        "Could you explain what {t} is, with an example?",
    ),
    train=tuple(
        _term(t)
        for t in (
            "photosynthesis", "inflation", "a metaphor", "compound interest", "an ecosystem", "biodiversity",
            "procrastination", "renewable energy", "an algorithm", "democracy", "gravity", "nostalgia",
            "a carbon footprint", "an idiom", "a recession", "evaporation", "migration", "empathy", "a mortgage",
            "a palindrome", "an omnivore", "irony",
        )
    ),
    heldout=tuple(
        _term(t)
        for t in ("a constellation", "erosion", "a dividend", "a sonnet", "hibernation", "a cover letter", "symbiosis")
    ),
)  # fmt: skip

PROS_CONS = Group(
    kind="pros and cons",
    phrasings=(
        "What are the pros and cons of {x}?",
        "List some advantages and disadvantages of {x}.",
        "I'm thinking about {x}. What are the upsides and downsides?",
        "Give me a balanced view of {x}: the good and the bad.",
        "Can you weigh up the pros and cons of {x}?",
    ),
    train=(
        "working from home", "buying a used car", "living in a big city", "getting a dog",
        "learning to play the piano as an adult", "taking a gap year before university", "reading on a tablet",
        "cooking meals in advance for the week", "travelling alone", "having a smart speaker at home",
        "commuting by electric bike", "joining a gym", "renting a car on holiday",
        "taking notes by hand instead of typing", "starting a small vegetable garden", "working a four-day week",
        "moving to the countryside", "paying with cash instead of a card", "taking online courses",
        "shopping at a local market instead of a supermarket",
    ),
    heldout=(
        "keeping chickens in the backyard", "living with roommates", "booking holidays at the last minute",
        "owning a house with a big garden", "learning to code as a hobby", "going camping in winter",
        "reading the news every morning",
    ),
)  # fmt: skip

RECOMMENDATION = Group(
    kind="recommendation",
    phrasings=(
        "Can you recommend some {x}?",
        "I'm looking for {x}. What would you suggest?",
        "What are some good {x}?",
        "Suggest a few {x}.",
        "Any recommendations for {x}?",
    ),
    train=(
        "easy houseplants for a beginner", "board games for a family with young kids",
        "healthy snacks to take on a hike", "classic novels for someone who doesn't read much",
        "hobbies for long winter evenings", "simple dinners for a busy weeknight", "podcasts about history",
        "exercises I can do at home without equipment", "places in Italy for a first-time visitor",
        "kitchen tools every new cook should have", "ways to practise a new language every day",
        "gifts for a coworker under twenty dollars", "rainy-day activities for toddlers",
        "flowers that attract butterflies to a garden", "sports an adult beginner can pick up",
        "card games for a group of friends", "documentaries about the ocean",
        "musical instruments that are easy to learn first", "breakfasts without eggs",
        "winter destinations for someone who loves snow",
    ),
    heldout=(
        "easy recipes to cook with kids", "animals to look out for on a walk in the woods",
        "books for a teenager who loves adventure stories", "ways to spend a weekend in a small coastal town",
        "drinks to serve at a summer party instead of soda", "gentle stretches to do before a jog",
        "songs a beginner can learn on the ukulele",
    ),
)  # fmt: skip


def _code(task: str, lang: str) -> dict[str, str]:
    return {"task": task, "lang": lang}


CODE_TASKS = Group(
    kind="code",
    phrasings=(
        "How do I {task} in {lang}?",
        "What's the simplest way to {task} in {lang}?",
        "Show me how to {task} in {lang}, with a short example.",
        "Write a short {lang} snippet that shows how to {task}.",
    ),
    train=tuple(
        _code(task, lang)
        for task, lang in (
            ("reverse a string", "Python"), ("count how many times each word appears in a sentence", "Python"),
            ("read a text file line by line", "Python"), ("check whether a number is even", "JavaScript"),
            ("remove duplicates from a list", "Python"), ("find the largest number in a list", "Python"),
            ("sort a list of names alphabetically", "Python"), ("get today's date", "Python"),
            ("add an item to the end of an array", "JavaScript"), ("join a list of words into one string", "Python"),
            ("loop over the keys and values of a dictionary", "Python"), ("turn a string into an integer", "Python"),
            ("check whether a word is a palindrome", "Python"), ("round a number to two decimal places", "Python"),
            ("show a message when a button is clicked", "JavaScript"),
            ("select all rows from a table called users", "SQL"),
        )
    ),
    heldout=tuple(
        _code(task, lang)
        for task, lang in (
            ("count the vowels in a string", "Python"), ("swap the values of two variables", "Python"),
            ("capitalise the first letter of every word", "Python"), ("find the length of a string", "JavaScript"),
            ("pick a random item from a list", "Python"),
        )
    ),
)  # fmt: skip

CODE_QUESTIONS = Group(
    kind="code",
    phrasings=("{x}",),
    train=(
        "What is the difference between a list and a dictionary in Python?",
        "What does this Python code print?\n\nfor i in range(3):\n    print(i * 2)",
        "Why do programmers put code in functions instead of repeating it?",
        "What is a bug in a program, and what are some common ways to find one?",
    ),
    heldout=(
        'What does this Python code print?\n\nwords = ["sun", "moon", "star"]\nprint(len(words[1]))',
        "What is a comment in code, and why is it useful?",
    ),
)

QUESTION = Group(
    kind="general question",
    phrasings=("{x}", "Quick question: {x}", "I'm curious: {x}"),
    train=(
        "Why did the ancient Egyptians build pyramids?",
        "Who was Marie Curie, and why is she famous?",
        "Why do we have leap years?",
        "How does scoring work in tennis?",
        "Why do some birds fly south for the winter?",
        "How did sailors find their way at sea before GPS?",
        "What makes the Mona Lisa so famous?",
        "Why is the Amazon rainforest important for the whole planet?",
        "What was the Silk Road?",
        "How do chameleons change colour?",
        "Why do we get goosebumps?",
        "How did the ancient Olympic Games begin?",
        "Why does bread go stale?",
        "What is the offside rule in football?",
        "Why did the Titanic sink?",
        "How do plants know which way is up?",
        "What did the Wright brothers achieve?",
        "Why is Pluto no longer called a planet?",
        "How are glass bottles made?",
        "What instruments play in a string quartet?",
    ),
    heldout=(
        "Why was the invention of the telephone so important?",
        "How do whales communicate with each other?",
        "What was the Renaissance?",
        "Why do we yawn?",
        "Why is a marathon 42 kilometres long?",
        "Who painted the ceiling of the Sistine Chapel, and how long did it take?",
        "Why do cacti have spines instead of leaves?",
    ),
)

GROUPS: tuple[Group, ...] = (
    EXPLANATION, ADVICE, HOW_TO, COMPARISON, CREATIVE_CHARACTERS, CREATIVE_SCENES, MESSAGE, SUMMARY,
    REWRITE_TONE, REWRITE_GRAMMAR, REWRITE_SIMPLER, BRAINSTORM, REASONING, DEFINITION, PROS_CONS,
    RECOMMENDATION, CODE_TASKS, CODE_QUESTIONS, QUESTION,
)  # fmt: skip

# --------------------------------------------------------------------------------------------
# Two-turn conversations (user, assistant, user), written whole. The follow-up only makes sense
# with the earlier turns, so the policy has to read the whole conversation.
# --------------------------------------------------------------------------------------------

FOLLOW_UP = "follow-up (two-turn)"

CONVERSATIONS_TRAIN: tuple[tuple[str, str, str], ...] = (
    (
        "What's a good name for a grey kitten?",
        "How about Pebble, Smoky, Ash or Misty? Pebble is short, cute and easy to call out.",
        "I like Pebble. Can you suggest a few more names in that style?",
    ),
    (
        "Give me an idea for a quick weeknight dinner.",
        (
            "Try a vegetable stir-fry: slice peppers, carrots and broccoli, fry them with garlic and soy sauce, and "
            "serve them over rice. It takes about twenty minutes."
        ),
        "That sounds good, but I'm out of rice. What could I serve it with instead?",
    ),
    (
        "Write a two-line poem about the sea.",
        "The sea rolls in with silver light,\nand hums the sleepy shore goodnight.",
        "Nice! Now write one about the mountains in the same style.",
    ),
    (
        "How many minutes are there in a day?",
        "There are 1,440 minutes in a day: 24 hours times 60 minutes.",
        "And how many seconds is that?",
    ),
    (
        "What is a haiku?",
        (
            "A haiku is a short Japanese poem of three lines, traditionally of five, seven and five syllables, often "
            "about nature or a single moment."
        ),
        "Could you write one about autumn?",
    ),
    (
        "I'm spending a weekend in Lisbon. What should I see?",
        (
            "Wander through the old Alfama district, ride one of the historic trams, visit the Belem Tower, and try a "
            "custard tart from a local bakery."
        ),
        "If I only had one afternoon, which of those would you pick?",
    ),
    (
        "Can you explain what a variable is in programming?",
        (
            "A variable is a named box that holds a value, such as a number or some text, so your program can use it "
            "and change it later. For example, score = 10 stores 10 under the name score."
        ),
        "Thanks. So what is a constant, then?",
    ),
    (
        "Draft a short message inviting my team to lunch on Friday.",
        (
            "Hi team! Let's have lunch together this Friday at 12:30. I'll book a table at the place around the "
            "corner. Let me know if you can make it!"
        ),
        "Can you make it a bit more formal? My manager's team is invited too.",
    ),
    (
        "What's the difference between weather and climate?",
        (
            "Weather is what the air is doing over hours or days, like today's rain. Climate is the usual pattern of "
            "weather in a place over many years."
        ),
        "Can you give me an example that shows both?",
    ),
    (
        "Suggest a hobby I can do at home in the evenings.",
        (
            "Sketching is a great one: you only need a pencil and paper, and you can start by drawing things around "
            "your home."
        ),
        "I'm not very artistic. Is there something that doesn't involve drawing?",
    ),
    (
        "Is it better to study in the morning or at night?",
        (
            "It depends on the person. Many people focus best in the morning, when they are rested, but some think "
            "more clearly at night. Try both for a week and see what works for you."
        ),
        "How can I tell which one works better for me?",
    ),
    (
        "Tell me a fun fact about honeybees.",
        (
            "Honeybees talk by dancing: a worker does a 'waggle dance' to show the others the direction and distance "
            "of good flowers."
        ),
        "That's amazing. How do the other bees understand the dance?",
    ),
)

CONVERSATIONS_HELDOUT: tuple[tuple[str, str, str], ...] = (
    (
        "Recommend a board game for two players.",
        (
            "Try Patchwork: it's a calm puzzle game in which you build a quilt from fabric tiles, and a game takes "
            "about half an hour."
        ),
        "We've played that one already. What else would you suggest?",
    ),
    (
        "How do I boil an egg?",
        (
            "Put the egg in a pot, cover it with cold water and bring it to the boil, then simmer for about seven "
            "minutes for a firm yolk. Cool it in cold water before peeling."
        ),
        "What if I want the yolk runny?",
    ),
    (
        "Write a short thank-you note to my aunt for the scarf she knitted.",
        (
            "Dear Aunt May, thank you so much for the lovely scarf! The colours are beautiful, and it has kept me warm "
            "on every chilly walk this week. Love, Sam"
        ),
        "Could you make it a little funnier?",
    ),
    (
        "What is a prime number?",
        (
            "A prime number is a whole number greater than 1 that can only be divided evenly by 1 and itself, like 2, "
            "3, 5, 7 and 11."
        ),
        "Is 51 a prime number?",
    ),
)

# --------------------------------------------------------------------------------------------
# System turns: a persona or a tone, never a mechanically checkable rule. `None` means the turn
# suits any request; otherwise it is only given to requests of the listed kinds.
# --------------------------------------------------------------------------------------------

SYSTEM_TURNS: tuple[tuple[str, frozenset[str] | None], ...] = (
    ("You are a friendly, helpful assistant. Keep your answers short and clear.", None),
    ("You are a patient teacher. Explain things simply, as if to a curious student.", None),
    ("Answer in a warm, encouraging tone.", None),
    ("You are a concise assistant. Get straight to the point.", None),
    ("You are a cheerful assistant who adds a light touch of humour where it fits.", None),
    ("You are a thoughtful librarian who enjoys helping people find good answers.", None),
    (
        "Be practical: focus on things the person can actually do today.",
        frozenset({"advice", "how-to", "brainstorming", "recommendation", "pros and cons"}),
    ),
    ("Write like a supportive coach: positive, honest and kind.", frozenset({"advice", "pros and cons"})),
    (
        "You are a calm, professional writing assistant.",
        frozenset({"email or message", "rewrite", "summary", "creative writing"}),
    ),
    ("You are a playful storyteller who loves vivid images.", frozenset({"creative writing"})),
    ("You are a programming tutor for beginners. Use plain words and small examples.", frozenset({"code"})),
    (
        "You are a science teacher for middle-school students.",
        frozenset({"explanation", "definition", "general question", "comparison"}),
    ),
    ("You are a careful maths tutor who explains each step.", frozenset({"word problem"})),
)

KINDS: tuple[str, ...] = tuple(dict.fromkeys([g.kind for g in GROUPS] + [FOLLOW_UP]))


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: str
    kind: str
    messages: tuple[Mapping[str, str], ...]

    def to_json(self) -> dict:
        return {"id": self.id, "messages": [dict(m) for m in self.messages]}


def _fields(item: str | Mapping[str, str]) -> Mapping[str, str]:
    return {"x": item} if isinstance(item, str) else item


def _group_requests(group: Group, items: Sequence, rng: random.Random) -> list[str]:
    """One request per item. Phrasings are dealt round-robin over the items in a seeded order, so
    every phrasing of the group is used about equally often."""
    order = list(items)
    phrasings = list(group.phrasings)
    rng.shuffle(order)
    rng.shuffle(phrasings)
    return [phrasings[i % len(phrasings)].format(**_fields(item)) for i, item in enumerate(order)]


def _system_turns_for(kind: str) -> list[str]:
    return [text for text, kinds in SYSTEM_TURNS if kinds is None or kind in kinds]


def check_messages(messages: Sequence[Mapping[str, str]]) -> str | None:
    """What is wrong with a row's messages, or None: roles system/user/assistant, a system turn
    only first, user and assistant turns alternating and ending on the user's, non-blank strings."""
    if not messages:
        return "no messages"
    turns = list(messages)
    if turns[0].get("role") == "system":
        turns = turns[1:]
    for n, m in enumerate(messages):
        if set(m) != {"role", "content"}:
            return f"turn {n} has keys {sorted(m)}; expected role and content"
        if m["role"] not in ("system", "user", "assistant"):
            return f"turn {n} has role {m['role']!r}"
        if not isinstance(m["content"], str) or not m["content"].strip():
            return f"turn {n} has empty or non-string content"
    for n, m in enumerate(turns):
        expected = "user" if n % 2 == 0 else "assistant"
        if m["role"] != expected:
            return f"turn {n} after the system turn is {m['role']!r}; expected {expected!r}"
    if not turns or turns[-1]["role"] != "user":
        return "the last turn is not the user's"
    return None


def build_set(which: str, rng: random.Random, id_prefix: str) -> list[Row]:
    """All rows of one set ("train" or "heldout"), shuffled, numbered, some with a system turn."""
    pending: list[tuple[str, list[dict[str, str]]]] = []
    for group in GROUPS:
        for text in _group_requests(group, getattr(group, which), rng):
            pending.append((group.kind, [{"role": "user", "content": text}]))
    conversations = CONVERSATIONS_TRAIN if which == "train" else CONVERSATIONS_HELDOUT
    for first, answer, follow_up in conversations:
        pending.append(
            (
                FOLLOW_UP,
                [
                    {"role": "user", "content": first},
                    {"role": "assistant", "content": answer},
                    {"role": "user", "content": follow_up},
                ],
            )
        )
    rng.shuffle(pending)

    n_system = round(SYSTEM_SHARE * len(pending))
    for i in sorted(rng.sample(range(len(pending)), n_system)):
        kind, messages = pending[i]
        system = rng.choice(_system_turns_for(kind))
        pending[i] = (kind, [{"role": "system", "content": system}, *messages])

    width = max(4, len(str(len(pending))))
    rows = [Row(f"{id_prefix}{n:0{width}d}", kind, tuple(msgs)) for n, (kind, msgs) in enumerate(pending, start=1)]
    _check_set(which, rows)
    return rows


def user_texts(row: Row) -> list[str]:
    return [m["content"] for m in row.messages if m["role"] == "user"]


def _check_set(which: str, rows: Sequence[Row]) -> None:
    """The builder's own invariants: a broken list in this file fails the build, not a later test."""
    seen: dict[str, str] = {}
    for row in rows:
        problem = check_messages(row.messages)
        if problem:
            raise AssertionError(f"{which} row {row.id}: {problem}")
        request = row.messages[-1]["content"]
        if request in seen:
            raise AssertionError(f"{which} rows {seen[request]} and {row.id} have the same request: {request!r}")
        seen[request] = row.id


def build_sets() -> tuple[list[Row], list[Row]]:
    """(training rows, held-out rows). No user text of the held-out set occurs in training."""
    train = build_set("train", random.Random(SEED), TRAIN_ID_PREFIX)
    heldout = build_set("heldout", random.Random(SEED + 1), HELDOUT_ID_PREFIX)
    train_texts = {t for r in train for t in user_texts(r)}
    shared = [r.id for r in heldout if any(t in train_texts for t in user_texts(r))]
    if shared:
        raise AssertionError(f"held-out rows with a user text that is also in training: {shared}")
    return train, heldout


def to_jsonl(rows: Sequence[Row]) -> str:
    return "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rows)


def write_sets(out_dir: Path | str = DATA_DIR) -> tuple[Path, Path]:
    out = Path(out_dir)
    train, heldout = build_sets()
    paths = (out / TRAIN_FILE, out / HELDOUT_FILE)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for path, rows in zip(paths, (train, heldout)):
            path.write_bytes(to_jsonl(rows).encode("utf-8"))
    except OSError as exc:
        raise UserError(f"{out}: cannot write the chat prompt sets there: {exc.strerror or exc}") from None
    return paths


def counts_table(train: Sequence[Row], heldout: Sequence[Row]) -> str:
    tc, hc = Counter(r.kind for r in train), Counter(r.kind for r in heldout)
    width = max(len(k) for k in KINDS + ("with a system turn",))
    lines = [f"{'task kind':<{width}}  train  held-out"]
    for kind in KINDS:
        lines.append(f"{kind:<{width}}  {tc[kind]:>5}  {hc[kind]:>8}")
    ts = sum(r.messages[0]["role"] == "system" for r in train)
    hs = sum(r.messages[0]["role"] == "system" for r in heldout)
    lines.append(f"{'with a system turn':<{width}}  {ts:>5}  {hs:>8}")
    lines.append(f"{'rows':<{width}}  {len(train):>5}  {len(heldout):>8}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/data/build_chat.py",
        description="Write the open-ended chat training and held-out prompt sets (deterministic).",
    )
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR, help=f"output directory (default: {DATA_DIR})")
    args = parser.parse_args(argv)
    try:
        train_path, heldout_path = write_sets(args.out_dir)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return UserError.exit_code
    train, heldout = build_sets()
    print(f"wrote {train_path} ({len(train)} rows)")
    print(f"wrote {heldout_path} ({len(heldout)} rows)")
    print(counts_table(train, heldout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
