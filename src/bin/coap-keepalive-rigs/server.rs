//! The resources a rig's in-process server offers.

use coap_keepalive::{Context, Resource, Response};

/// `GET /`, which the soak's clients request now and then.
pub fn install_resources(ctx: &Context) {
    ctx.add_resource(
        Resource::new("/").get(|_, _| Response::content_text("coap-keepalive-rigs server")),
    );
}
