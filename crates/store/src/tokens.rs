//! Personal access tokens. Only a sha256 of each secret is stored.

use deeptune_core::ApiError;
use deeptune_core::api::Key;
use deeptune_core::scope::{Scope, format_scopes, parse_scopes};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::{Result, Store, db_error, now};

/// A token as the authenticator sees it.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub id: String,
    pub user_id: String,
    pub scopes: Vec<Scope>,
    pub app_id: Option<String>,
}

impl TokenRecord {
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&Scope::Admin) || self.scopes.contains(&scope)
    }
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl Store {
    /// Creates a token and returns it with its secret (the only time the secret is known).
    pub async fn create_token(
        &self,
        user_id: &str,
        scopes: &[Scope],
        app_id: Option<&str>,
        description: &str,
    ) -> Result<Key> {
        if scopes.is_empty() {
            return Err(ApiError::invalid("a key needs at least one scope"));
        }
        let mut secret_bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut secret_bytes);
        let secret = format!("dt_{}", hex::encode(secret_bytes));
        let id = deeptune_core::ids::generate_id();
        let created_at = now();
        sqlx::query(
            "INSERT INTO tokens (id, user_id, token_hash, scopes, app_id, description, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(user_id)
        .bind(hash_secret(&secret))
        .bind(format_scopes(scopes))
        .bind(app_id)
        .bind(description)
        .bind(&created_at)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(Key {
            id,
            description: description.to_string(),
            scopes: scopes.to_vec(),
            app_id: app_id.map(str::to_string),
            user_id: user_id.to_string(),
            token: Some(secret),
            created_at: Some(created_at),
        })
    }

    pub async fn find_token(&self, secret: &str) -> Result<Option<TokenRecord>> {
        let row: Option<(String, String, String, Option<String>)> =
            sqlx::query_as("SELECT id, user_id, scopes, app_id FROM tokens WHERE token_hash = ?")
                .bind(hash_secret(secret))
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        Ok(row.map(|(id, user_id, scopes, app_id)| TokenRecord {
            id,
            user_id,
            scopes: parse_scopes(&scopes).unwrap_or_default(),
            app_id,
        }))
    }

    pub async fn count_tokens(&self) -> Result<u64> {
        let (n,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM tokens").fetch_one(&self.pool).await.map_err(db_error)?;
        Ok(n as u64)
    }

    pub async fn list_tokens(&self, user_id: &str) -> Result<Vec<Key>> {
        let rows: Vec<(String, String, String, Option<String>, String)> = sqlx::query_as(
            "SELECT id, description, scopes, app_id, created_at FROM tokens WHERE user_id = ? ORDER BY created_at, id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|(id, description, scopes, app_id, created_at)| Key {
                id,
                description,
                scopes: parse_scopes(&scopes).unwrap_or_default(),
                app_id,
                user_id: user_id.to_string(),
                token: None,
                created_at: Some(created_at),
            })
            .collect())
    }

    pub async fn delete_token(&self, user_id: &str, id: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM tokens WHERE user_id = ? AND id = ?")
            .bind(user_id)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        if done.rows_affected() == 0 {
            return Err(ApiError::not_found("key", id));
        }
        Ok(())
    }
}
