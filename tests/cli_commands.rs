//! The product binary's command set: what `coap-keepalive --help` offers a user, and that the
//! test rigs live in their own binary.

use std::process::Command;

fn help_of(binary: &str) -> String {
    let output = Command::new(binary)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(output.status.success(), "{binary} --help failed");
    String::from_utf8(output.stdout).expect("help is UTF-8")
}

/// The subcommands listed under "Commands:" in clap's help.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn product_binary_lists_the_user_commands_only() {
    let commands = subcommands(&help_of(env!("CARGO_BIN_EXE_coap-keepalive")));
    assert_eq!(
        commands,
        [
            "serve", "ping", "get", "put", "post", "delete", "observe", "demo", "sessions",
            "certs", "help"
        ]
    );
}

#[test]
fn rigs_binary_holds_load_soak_flood_and_burst() {
    let commands = subcommands(&help_of(env!("CARGO_BIN_EXE_coap-keepalive-rigs")));
    assert_eq!(commands, ["load", "soak", "flood", "burst", "help"]);
}
