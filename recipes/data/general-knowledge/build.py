#!/usr/bin/env python3
"""Build mc.jsonl: 60 very easy multiple-choice questions for checking catastrophic forgetting.

Each entry is (question, correct answer, three distractors). The correct answer is placed at index i % 4 so
that answer positions are balanced (15 per position). Deterministic.

Usage: python3 recipes/data/general-knowledge/build.py
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

ITEMS = [
    ("What is the capital of France?", "Paris", ["London", "Berlin", "Madrid"]),
    ("What is the capital of Japan?", "Tokyo", ["Beijing", "Seoul", "Bangkok"]),
    ("What is the capital of Italy?", "Rome", ["Milan", "Venice", "Naples"]),
    ("What is the capital of Germany?", "Berlin", ["Munich", "Hamburg", "Vienna"]),
    ("What is the capital of Spain?", "Madrid", ["Barcelona", "Lisbon", "Seville"]),
    ("What is the capital of the United Kingdom?", "London", ["Manchester", "Dublin", "Liverpool"]),
    ("What is the capital of Canada?", "Ottawa", ["Toronto", "Vancouver", "Montreal"]),
    ("What is the capital of Egypt?", "Cairo", ["Alexandria", "Nairobi", "Casablanca"]),
    ("What is the capital of Russia?", "Moscow", ["Saint Petersburg", "Kyiv", "Minsk"]),
    ("What is the capital of China?", "Beijing", ["Shanghai", "Hong Kong", "Tokyo"]),
    ("What is the capital of the United States?", "Washington, D.C.", ["New York", "Los Angeles", "Chicago"]),
    ("At what temperature does water boil at sea level, in degrees Celsius?", "100", ["50", "0", "150"]),
    ("At what temperature does water freeze, in degrees Celsius?", "0", ["100", "50", "-40"]),
    ("What color is the sky on a clear sunny day?", "Blue", ["Green", "Red", "Purple"]),
    ("What color do you get by mixing blue and yellow paint?", "Green", ["Orange", "Purple", "Pink"]),
    ("What color is a ripe banana?", "Yellow", ["Blue", "Purple", "Gray"]),
    ("What color is fresh grass?", "Green", ["Red", "Blue", "White"]),
    ("Which animal is known as the king of the jungle?", "Lion", ["Elephant", "Giraffe", "Zebra"]),
    ("Which animal says \"moo\"?", "Cow", ["Dog", "Cat", "Sheep"]),
    ("Which animal barks?", "Dog", ["Cat", "Cow", "Horse"]),
    ("How many legs does a spider have?", "Eight", ["Six", "Four", "Ten"]),
    ("What is the largest mammal on Earth?", "Blue whale", ["Elephant", "Giraffe", "Hippopotamus"]),
    ("Which animal has a very long neck and lives in Africa?", "Giraffe", ["Penguin", "Kangaroo", "Polar bear"]),
    ("Which of these animals can fly?", "Eagle", ["Dog", "Horse", "Cow"]),
    ("What do bees make?", "Honey", ["Milk", "Silk", "Wool"]),
    ("What is two plus two?", "Four", ["Three", "Five", "Six"]),
    ("What is five times three?", "Fifteen", ["Eight", "Twelve", "Twenty"]),
    ("What is ten minus four?", "Six", ["Four", "Five", "Fourteen"]),
    ("What is twelve divided by three?", "Four", ["Three", "Six", "Nine"]),
    ("How many days are in a week?", "Seven", ["Five", "Six", "Ten"]),
    ("Which day comes after Monday?", "Tuesday", ["Sunday", "Wednesday", "Friday"]),
    ("Which day comes before Saturday?", "Friday", ["Sunday", "Thursday", "Monday"]),
    ("How many months are in a year?", "Twelve", ["Ten", "Eleven", "Thirteen"]),
    ("Which month comes after June?", "July", ["May", "August", "September"]),
    ("How many hours are in a day?", "24", ["12", "20", "48"]),
    ("How many minutes are in an hour?", "60", ["30", "100", "24"]),
    ("Which planet do we live on?", "Earth", ["Mars", "Venus", "Jupiter"]),
    ("Which planet is known as the Red Planet?", "Mars", ["Venus", "Jupiter", "Saturn"]),
    ("What is the largest planet in our solar system?", "Jupiter", ["Earth", "Mars", "Mercury"]),
    ("Which planet is closest to the Sun?", "Mercury", ["Venus", "Earth", "Neptune"]),
    ("Which planet is famous for its large rings?", "Saturn", ["Mercury", "Mars", "Venus"]),
    ("What is the star at the center of our solar system?", "The Sun", ["The Moon", "Polaris", "Sirius"]),
    ("What is the name of Earth's natural satellite?", "The Moon", ["The Sun", "Venus", "Titan"]),
    ("Which gas do humans need to breathe to stay alive?", "Oxygen", ["Helium", "Carbon dioxide", "Neon"]),
    ("Which gas do plants take in from the air to make food?", "Carbon dioxide", ["Oxygen", "Helium", "Hydrogen"]),
    ("What is the chemical formula for water?", "H2O", ["CO2", "O2", "NaCl"]),
    ("What is frozen water called?", "Ice", ["Steam", "Fog", "Sand"]),
    ("Which is the largest ocean on Earth?", "Pacific Ocean", ["Atlantic Ocean", "Indian Ocean", "Arctic Ocean"]),
    ("On which continent is Brazil?", "South America", ["Africa", "Europe", "Asia"]),
    ("Which country is famous for kangaroos?", "Australia", ["Canada", "Brazil", "Norway"]),
    ("What is the opposite of hot?", "Cold", ["Warm", "Wet", "Bright"]),
    ("What is a baby dog called?", "Puppy", ["Kitten", "Calf", "Foal"]),
    ("How many sides does a triangle have?", "Three", ["Four", "Five", "Six"]),
    ("How many sides does a square have?", "Four", ["Three", "Five", "Eight"]),
    ("What shape is a soccer ball?", "Sphere", ["Cube", "Pyramid", "Cylinder"]),
    ("Which season comes after winter?", "Spring", ["Summer", "Autumn", "Winter"]),
    ("What is the main language spoken in Brazil?", "Portuguese", ["Spanish", "French", "English"]),
    ("Which organ pumps blood through the body?", "Heart", ["Lungs", "Liver", "Stomach"]),
    ("How many legs does an insect have?", "Six", ["Four", "Eight", "Ten"]),
    ("What is the tallest mountain in the world?", "Mount Everest", ["Mount Kilimanjaro", "Mont Blanc", "Mount Fuji"]),
]


def rows():
    out = []
    for i, (question, correct, distractors) in enumerate(ITEMS):
        assert len(distractors) == 3 and correct not in distractors and len(set(distractors)) == 3, question
        pos = i % 4
        choices = list(distractors)
        choices.insert(pos, correct)
        out.append({"question": question, "choices": choices, "answer": pos})
    return out


def main():
    data = rows()
    assert len(data) == 60 and len({r["question"] for r in data}) == 60
    path = os.path.join(HERE, "mc.jsonl")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for row in data:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    print(f"general-knowledge: {len(data)} rows")


if __name__ == "__main__":
    main()
