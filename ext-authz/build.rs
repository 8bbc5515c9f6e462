//! The tests embed `../migrations` at compile time (`sqlx::test`); without this, a new migration file
//! would not rebuild them.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
