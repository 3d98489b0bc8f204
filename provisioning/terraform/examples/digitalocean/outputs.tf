output "ipv4_address" {
  value = digitalocean_droplet.host.ipv4_address
}

output "enrollment_token_id" {
  description = "Revoke it with `unlockd token revoke ID` if the droplet never boots."
  value       = module.unlockd.token_id
}
