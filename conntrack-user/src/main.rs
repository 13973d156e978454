fn main() {
    std::process::exit(ctscope::cli::main());
}
