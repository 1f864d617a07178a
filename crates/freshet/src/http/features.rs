//! `GET /v1/users/{id}/features` and `GET /v1/items/{id}/features`: every
//! served feature of the entity, each with its running value (the earliest
//! open window holding the newest event), the last closed window, and the
//! event time it reflects. Reads go to the lock-free views only.

use axum::Json;
use axum::extract::{Path, State};
use freshet_engine::aggregate::AggValue;
use freshet_engine::features::{Entity, FeatureView, GroupView, WindowValue};
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::ApiError;

pub(super) async fn user(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    entity_features(&state.views, Entity::User, &id).map(Json)
}

pub(super) async fn item(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    entity_features(&state.views, Entity::Item, &id).map(Json)
}

fn value_json(v: &AggValue) -> Value {
    match v {
        AggValue::Int(n) => json!(n),
        AggValue::Float(x) => json!(x),
        AggValue::List(items) => json!(items),
    }
}

fn window_json(w: &Option<WindowValue>) -> Value {
    match w {
        Some(w) => json!({ "window_start": w.start, "window_end": w.end, "value": value_json(&w.value) }),
        None => Value::Null,
    }
}

fn group_json(g: &GroupView) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("current".into(), window_json(&g.current));
    m.insert("last_closed".into(), window_json(&g.last_closed));
    m.insert("event_time".into(), json!(g.event_time));
    m
}

/// Every served feature of `entity` `id` in `views`, as the API answers it.
pub(super) fn entity_features(views: &[FeatureView], entity: Entity, id: &str) -> Result<Value, ApiError> {
    if id.is_empty() {
        return Err(ApiError::BadRequest("the id must not be empty".into()));
    }
    let mut features = Map::new();
    let mut found = false;
    for view in views.iter().filter(|v| v.entity == entity) {
        let values = view.get(id);
        found |= values.is_some();
        let mut f = Map::new();
        f.insert("aggregate".into(), json!(view.aggregate));
        f.insert("window".into(), json!(view.window));
        match (&values, view.group_fields.is_empty()) {
            (Some(v), true) => {
                if let Some(g) = v.first() {
                    f.extend(group_json(g));
                }
            }
            (None, true) => {
                f.insert("current".into(), Value::Null);
                f.insert("last_closed".into(), Value::Null);
                f.insert("event_time".into(), Value::Null);
            }
            (values, false) => {
                f.insert("group_by".into(), json!(view.group_fields));
                let groups: Vec<Value> = values
                    .iter()
                    .flat_map(|v| v.iter())
                    .map(|g| {
                        let key: Map<String, Value> =
                            view.group_fields.iter().cloned().zip(g.group.iter().map(|s| json!(s))).collect();
                        let mut m = group_json(g);
                        m.insert("key".into(), Value::Object(key));
                        Value::Object(m)
                    })
                    .collect();
                f.insert("groups".into(), json!(groups));
            }
        }
        features.insert(view.name.clone(), Value::Object(f));
    }
    let kind = entity.name();
    Ok(json!({ "entity": kind, "id": id, "found": found, "features": features }))
}
