output "user_data" {
  description = "cloud-init user-data for the instance. Holds the one-time token: sensitive."
  value       = module.user_data.user_data
  sensitive   = true
}

output "token_id" {
  description = "Id of the enrollment token (for `unlockd token list` / `unlockd token revoke`); null when the host was already enrolled."
  value       = local.token_created ? try(local.response.id, null) : null
}

output "token_expires_at" {
  description = "Unix time after which the token no longer enrolls; null when the host was already enrolled."
  value       = local.token_created ? try(local.response.expiresAt, null) : null
}

output "already_enrolled" {
  description = "True when the escrow server already has a live host with this name (no token was made)."
  value       = local.already_enrolled
}
