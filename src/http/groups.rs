//! `POST /v1/groups`, `GET /v1/groups/{id}`, `GET|POST /v1/groups/{id}/members`.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use super::Ctx;
use super::error::ApiError;
use super::forward::Held;
use super::request::{Fields, Query, read_body};
use super::response::{Response, json_value};
use crate::domain::{ConversationId, GroupId, UserId};
use crate::service::groups::{ChangeMembers, CreateGroup};

/// Longest group name, in bytes.
const MAX_NAME: usize = 256;

fn group_id(id: &str) -> Result<GroupId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::field("the group id in the path must be a UUID"))
}

/// Anyone may put anyone in a group, as anyone may message anyone: a
/// per-user budget of creations and member changes keeps that from being
/// a spam channel without limits (docs/security.md).
fn take_group_change(ctx: &Ctx, user: UserId) -> Result<(), ApiError> {
    // Counted by the request metrics (429 on the route), not as a send.
    ctx.group_rate
        .take(user)
        .map_err(|wait| ApiError::RateLimited("group changes", wait))
}

pub(super) async fn create(
    ctx: &Ctx,
    user: UserId,
    hop: bool,
    req: Request<Incoming>,
) -> Result<Response, ApiError> {
    // Taken where the client came in, not again at the owner.
    if !hop {
        take_group_change(ctx, user)?;
    }
    let held = Held::of(&req);
    let body = read_body(req, ctx.limits.max_body, ctx.limits.body_timeout).await?;
    let fields = Fields::parse(&body)?;
    // A group the client names is created by the node owning it; one
    // without an id is new to every node, and this one creates it.
    if let Some(g) = fields.opt_id::<GroupId>("group_id")?
        && let Some(answer) = held
            .pass_if_remote(ctx, ConversationId::from(g).0.as_bytes(), hop, body.clone())
            .await
    {
        return answer;
    }
    let request = CreateGroup {
        group_id: fields.opt_id("group_id")?,
        name: fields.string("name", MAX_NAME)?,
        members: fields.ids("members")?,
    };
    let group = ctx.service.create_group(user, request).await?;
    Ok(json_value(StatusCode::CREATED, &json!({ "group": group })))
}

pub(super) async fn get(ctx: &Ctx, user: UserId, id: &str) -> Result<Response, ApiError> {
    let group = ctx.service.group(user, group_id(id)?).await?;
    Ok(json_value(StatusCode::OK, &json!({ "group": group })))
}

pub(super) async fn members(
    ctx: &Ctx,
    user: UserId,
    id: &str,
    req: &Request<Incoming>,
) -> Result<Response, ApiError> {
    let g = group_id(id)?;
    let query = Query::parse(req.uri().query());
    let limit = query.limit(100, 1000)?;
    let after: Option<UserId> = query.id("after")?;
    let (page, next) = ctx
        .service
        .group_members_page(user, g, limit, after)
        .await?;
    let members: Vec<_> = page
        .into_iter()
        .map(|(user_id, joined_at)| json!({"user_id": user_id, "joined_at": joined_at}))
        .collect();
    Ok(json_value(
        StatusCode::OK,
        &json!({ "members": members, "next": next }),
    ))
}

pub(super) async fn change(
    ctx: &Ctx,
    user: UserId,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response, ApiError> {
    let g = group_id(id)?;
    // Member changes always run on the group's owner (the router passed
    // them on): taken there, once.
    take_group_change(ctx, user)?;
    let body = read_body(req, ctx.limits.max_body, ctx.limits.body_timeout).await?;
    let fields = Fields::parse(&body)?;
    let change = ChangeMembers {
        add: fields.ids("add")?,
        remove: fields.ids("remove")?,
    };
    let group = ctx.service.change_members(user, g, change).await?;
    Ok(json_value(StatusCode::OK, &json!({ "group": group })))
}
