"""Regenerate packages/rl/recipes/text2sql/: a small SQLite database and questions with gold SQL.

A shop database (customers, products, orders) and 43 questions, each with a gold query, written
as prompt rows for GRPO's `sql_execution` reward (columns `db_path`, `gold_sql`). 35 train, 8 held
out. Deterministic: run it again and the files are byte-identical.
"""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "recipes" / "text2sql"
SCHEMA = """CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL);
CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT NOT NULL, price REAL NOT NULL);
CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL REFERENCES customers(id),
  product_id INTEGER NOT NULL REFERENCES products(id), quantity INTEGER NOT NULL, day TEXT NOT NULL);"""
CITIES = ["Berlin", "Lyon", "Oslo", "Porto", "Turin", "Zurich"]
NAMES = ["Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ines", "Jon", "Kai", "Lea"]
PRODUCTS = [
    ("pen", "office", 1.5),
    ("notebook", "office", 3.0),
    ("stapler", "office", 7.5),
    ("lamp", "home", 24.0),
    ("mug", "home", 6.0),
    ("chair", "home", 59.0),
    ("cable", "tech", 9.0),
    ("mouse", "tech", 19.0),
    ("keyboard", "tech", 35.0),
    ("monitor", "tech", 149.0),
]
SYSTEM = (
    "You write SQLite queries. Database schema:\n" + SCHEMA + "\n"
    "Think in <think>...</think>, then give the query in <answer>```sql ... ```</answer>."
)


def questions() -> list[tuple[str, str]]:
    """(question, gold SQL) pairs, from templates over the data's values."""
    pairs: list[tuple[str, str]] = []
    for city in CITIES:
        pairs.append(
            (f"How many customers live in {city}?", f"SELECT count(*) FROM customers WHERE city = '{city}'")
        )
        pairs.append(
            (
                f"What is the total quantity ordered by customers from {city}?",
                "SELECT coalesce(sum(o.quantity), 0) FROM orders o JOIN customers c ON c.id = o.customer_id "
                f"WHERE c.city = '{city}'",
            )
        )
    for category in ("office", "home", "tech"):
        pairs.append(
            (
                f"List the names of {category} products.",
                f"SELECT name FROM products WHERE category = '{category}'",
            )
        )
        pairs.append(
            (
                f"What is the average price of {category} products?",
                f"SELECT avg(price) FROM products WHERE category = '{category}'",
            )
        )
    for name, _, _ in PRODUCTS:
        pairs.append(
            (
                f"How many units of {name} were ordered in total?",
                "SELECT coalesce(sum(o.quantity), 0) FROM orders o JOIN products p ON p.id = o.product_id "
                f"WHERE p.name = '{name}'",
            )
        )
    for limit in (5, 10, 20, 50, 100):
        pairs.append(
            (f"Which products cost less than {limit}?", f"SELECT name FROM products WHERE price < {limit}")
        )
    for name in NAMES[:8]:
        pairs.append(
            (f"Which city does {name} live in?", f"SELECT city FROM customers WHERE name = '{name}'")
        )
    pairs.append(
        (
            "Which customer placed the most orders?",
            "SELECT c.name FROM customers c JOIN orders o ON o.customer_id = c.id GROUP BY c.id "
            "ORDER BY count(*) DESC, c.id LIMIT 1",
        )
    )
    pairs.append(("How many orders are there?", "SELECT count(*) FROM orders"))
    return pairs


def write_database(path: Path) -> None:
    path.unlink(missing_ok=True)
    rng = random.Random(0)
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA)
        db.executemany(
            "INSERT INTO customers VALUES (?, ?, ?)",
            [(i + 1, n, CITIES[i % len(CITIES)]) for i, n in enumerate(NAMES)],
        )
        db.executemany(
            "INSERT INTO products VALUES (?, ?, ?, ?)", [(i + 1, *p) for i, p in enumerate(PRODUCTS)]
        )
        orders = [
            (
                i + 1,
                rng.randint(1, len(NAMES)),
                rng.randint(1, len(PRODUCTS)),
                rng.randint(1, 5),
                f"2026-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
            )
            for i in range(60)
        ]
        db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?)", orders)
    with sqlite3.connect(path) as db:
        db.execute("VACUUM")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    write_database(OUT / "shop.sqlite")
    rows = [
        {
            "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
            "db_path": "shop.sqlite",
            "gold_sql": sql,
        }
        for q, sql in questions()
    ]
    random.Random(1).shuffle(rows)
    for name, part in (("train.jsonl", rows[8:]), ("heldout.jsonl", rows[:8])):
        (OUT / name).write_text("".join(json.dumps(r) + "\n" for r in part))
    print(OUT, len(rows))


if __name__ == "__main__":
    main()
