"""The names and values synthetic conversations draw from.

Disjoint from the evaluation conversations (`memlora/data/demo_conversation.jsonl` and
`memlora/data/heldout/`): none of their people, pets, places, jobs or other facts occurs here, so a
score on them measures what an adapter generalises, not what it memorised (tests/test_synthetic.py checks).
Each value is a dict of the forms the phrasings need.
"""

from __future__ import annotations

FEMALE = ("Lena", "Sofia", "Mira", "Nora", "Elif", "Hanna", "Chloe", "Irene", "Dana", "Freya", "Greta", "Leila",
          "Olga", "Rosa", "Tara", "Vera", "Zoe", "Clara", "Esther", "Alice", "Beatriz", "Camila", "Daria", "Fatima",
          "Gloria", "Imani", "Jade", "Katya", "Linnea", "Noemi", "Paula", "Selma", "Thea", "Ursula", "Wanda", "Yara")
MALE = ("Omar", "Jonas", "Felix", "Marco", "Pavel", "Luca", "Igor", "Stefan", "Victor", "Emil", "Hugo", "Leon",
        "Noah", "Oscar", "Raj", "Theo", "Yusuf", "Diego", "Kenji", "Anton", "Bruno", "Cyrus", "Dmitri", "Elias",
        "Farid", "Goran", "Henrik", "Ivan", "Jakob", "Lars", "Mateo", "Nikolai", "Pedro", "Ruben", "Silas", "Tobias")
PETS = ("Rex", "Luna", "Mochi", "Pepper", "Ziggy", "Nugget", "Olive", "Coco", "Juno", "Rocky", "Toffee", "Waffles",
        "Pickles", "Bean", "Kiwi", "Socks", "Pretzel", "Noodle", "Ginger", "Shadow", "Peanut", "Oreo", "Tofu", "Marble")
BREEDS = {"dog": ("corgi", "poodle", "labrador", "border collie", "greyhound", "spaniel", "husky", "terrier", "pug",
                  "shiba inu", "dalmatian", "whippet"),
          "cat": ("siamese", "maine coon", "ragdoll", "sphynx", "persian", "bengal", "british shorthair")}
RELATIVES = {"sister": "f", "brother": "m", "colleague": None, "neighbour": None, "cousin": None, "best friend": None}

JOBS = tuple({"title": t, "place": p} for t, p in (
    ("pharmacist", "a pharmacy downtown"), ("librarian", "the public library"), ("electrician", "a construction firm"),
    ("accountant", "a shipping company"), ("graphic designer", "an advertising agency"),
    ("physiotherapist", "a sports clinic"), ("chef", "an Italian restaurant"), ("journalist", "the local newspaper"),
    ("mechanic", "a car repair shop"), ("data analyst", "a bank"), ("florist", "a flower shop"),
    ("veterinarian", "an animal clinic"), ("lawyer", "a law firm"), ("photographer", "a wedding studio"),
    ("barista", "a coffee roastery"), ("park ranger", "the national park"), ("zookeeper", "the city zoo"),
    ("web developer", "a small startup"), ("optician", "an eyewear shop"), ("social worker", "the city council"),
    ("sound engineer", "a recording studio"), ("plumber", "a heating company"), ("midwife", "a birth centre"),
    ("tour guide", "a travel agency"), ("butcher", "a farm shop"), ("locksmith", "a hardware store"),
))
CITIES = ("Oslo", "Krakow", "Valencia", "Tallinn", "Lyon", "Utrecht", "Graz", "Bergen", "Turin", "Seville", "Gdansk",
          "Dresden", "Malmo", "Antwerp", "Cork", "Aarhus", "Bilbao", "Salzburg", "Split", "Riga", "Ljubljana", "Basel")
HOBBIES = tuple({"base": b, "third": t, "ing": i, "answer": a} for b, t, i, a in (
    ("play chess at a club", "plays chess at a club", "playing chess at a club", "chess"),
    ("go rock climbing", "goes rock climbing", "rock climbing", "rock climbing"),
    ("do pottery", "does pottery", "doing pottery", "pottery"),
    ("go kayaking", "goes kayaking", "kayaking", "kayaking"),
    ("watch birds", "watches birds", "birdwatching", "birdwatching"),
    ("knit", "knits", "knitting", "knitting"),
    ("dance salsa", "dances salsa", "salsa dancing", "salsa dancing"),
    ("paint watercolours", "paints watercolours", "painting watercolours", "watercolour painting"),
    ("play the violin", "plays the violin", "playing the violin", "the violin"),
    ("do trail running", "does trail running", "trail running", "trail running"),
    ("play the drums in a band", "plays the drums in a band", "playing the drums", "the drums"),
    ("grow vegetables on an allotment", "grows vegetables on an allotment", "gardening", "gardening"),
    ("play volleyball", "plays volleyball", "playing volleyball", "volleyball"),
    ("do yoga", "does yoga", "doing yoga", "yoga"),
))
CARS = tuple({"car": c, "short": s} for c, s in (
    ("green Skoda", "Skoda"), ("red Volvo", "Volvo"), ("old Fiat Panda", "Fiat"), ("silver Toyota", "Toyota"),
    ("blue Mini", "Mini"), ("white Tesla", "Tesla"), ("vintage Saab", "Saab"), ("yellow Renault", "Renault"),
    ("black Peugeot", "Peugeot"), ("grey Subaru", "Subaru"),
))
TRIPS = tuple({"base": b, "past": p} for b, p in (
    ("go hiking in the Dolomites", "went hiking in the Dolomites"), ("see a jazz concert", "saw a jazz concert"),
    ("visit the botanical garden", "visited the botanical garden"), ("run a 10k race", "ran a 10k race"),
    ("go to a wine tasting", "went to a wine tasting"), ("climb Mount Triglav", "climbed Mount Triglav"),
    ("see the northern lights in Tromso", "saw the northern lights in Tromso"),
    ("go to a comedy show", "went to a comedy show"), ("visit a lavender farm", "visited a lavender farm"),
    ("go to a board game night", "went to a board game night"), ("tour a chocolate factory", "toured a chocolate factory"),
    ("go camping by a lake", "went camping by a lake"), ("visit the science museum", "visited the science museum"),
    ("watch a football final", "watched a football final"),
))
PLANS = tuple({"base": b, "ing": i} for b, i in (
    ("fly to Tenerife", "flying to Tenerife"), ("host a barbecue", "hosting a barbecue"),
    ("take the ferry to Gotland", "taking the ferry to Gotland"), ("repaint the kitchen", "repainting the kitchen"),
    ("go camping in the Alps", "going camping in the Alps"), ("ride in a charity bike ride", "riding in a charity bike ride"),
    ("visit friends in Vienna", "visiting friends in Vienna"), ("perform at an open mic night", "performing at an open mic night"),
    ("start a beekeeping course", "starting a beekeeping course"), ("move into a new flat", "moving into a new flat"),
    ("go to a music festival", "going to a music festival"), ("take a pottery workshop", "taking a pottery workshop"),
))
COURSES = tuple({"course": c, "the": t, "answer": a} for c, t, a in (
    ("an evening course in Italian", "the Italian course", "Italian"),
    ("a first aid course", "the first aid course", "first aid"),
    ("an online course in photography", "the photography course", "photography"),
    ("a woodworking course", "the woodworking course", "woodworking"),
    ("a course in astronomy", "the astronomy course", "astronomy"),
    ("a course in Japanese", "the Japanese course", "Japanese"),
    ("a sailing course", "the sailing course", "sailing"),
    ("an accounting course", "the accounting course", "accounting"),
))
PET_EVENTS = tuple({"base": b, "past": p} for b, p in (
    ("learn to roll over", "learned to roll over"), ("go to the vet for a checkup", "went to the vet for a checkup"),
    ("chew up a sofa cushion", "chewed up a sofa cushion"), ("learn to give a paw", "learned to give a paw"),
    ("get a new collar", "got a new collar"), ("win a ribbon at a pet show", "won a ribbon at a pet show"),
    ("escape into the neighbour's garden", "escaped into the neighbour's garden"),
))
