fn main() {
    // Put this crate's `getrandom` in the dynamic symbol table, so that the run-time look-up
    // libraries make (`dlsym(RTLD_DEFAULT, "getrandom")`) finds it; see src/seeded.rs.
    println!("cargo:rustc-link-arg=-Wl,--export-dynamic-symbol=getrandom");
}
