// The demo catalogue: a static index the search page reads in the browser
// (no server-side backend; any static file server will do).
window.CATALOG = [
  { id: 1, title: "The Rust Programming Language", category: "books", price: "39.95", text: "The official book on Rust: ownership, borrowing, lifetimes, traits and fearless concurrency." },
  { id: 2, title: "Programming Rust", category: "books", price: "49.99", text: "Fast, safe systems development with Rust, for experienced programmers." },
  { id: 3, title: "Rust Atomics and Locks", category: "books", price: "44.00", text: "Low-level concurrency in practice: atomics, memory ordering, locks." },
  { id: 4, title: "Headless Browsers Explained", category: "books", price: "24.50", text: "How browsers render pages without a screen, and how to drive them over CDP." },
  { id: 5, title: "Gardening for Beginners", category: "books", price: "19.90", text: "Soil, seeds, watering and the patience a first garden needs." },
  { id: 6, title: "Stainless Tea Kettle", category: "kitchen", price: "29.00", text: "A 1.7 litre kettle with a whistle; works on gas and induction." },
  { id: 7, title: "Cast Iron Pan", category: "kitchen", price: "35.00", text: "A 26 cm pan that lasts a lifetime when seasoned." },
  { id: 8, title: "Chef Knife", category: "kitchen", price: "59.00", text: "A 20 cm knife of hardened steel." },
  { id: 9, title: "Garden Hose 25 m", category: "garden", price: "27.50", text: "A kink-free hose with a brass coupling." },
  { id: 10, title: "Rust Remover Spray", category: "garden", price: "9.99", text: "Removes rust from garden tools and bicycles." },
  { id: 11, title: "Pruning Shears", category: "garden", price: "18.00", text: "Bypass shears for branches up to 2 cm." },
  { id: 12, title: "Watering Can", category: "garden", price: "12.00", text: "A 10 litre can with a removable rose." }
];
