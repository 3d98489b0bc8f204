# One Debian 13 droplet whose /srv/secrets is an fscrypt directory with its key held by the
# unlockd escrow server: cloud-init installs the agent and enrolls it at first boot, after which
# unlockd-agent.service unlocks it at every boot.

module "unlockd" {
  source = "../../modules/unlockd-enrollment"

  server_url           = var.escrow_url
  operator_token       = var.operator_token
  ca_pem               = var.escrow_ca_file == "" ? "" : file(var.escrow_ca_file)
  host_name            = var.name
  token_ttl_seconds    = 1800
  enroll_cidrs         = var.enroll_cidrs
  agent_package_url    = var.agent_package_url
  agent_package_sha256 = var.agent_package_sha256

  fscrypt_dirs = [{ path = "/srv/secrets", name = "secrets" }]
  # The root filesystem of the stock image is ext4 without the 'encrypt' feature.
  fscrypt_enable_ext4_encrypt = true
}

resource "digitalocean_droplet" "host" {
  name      = var.name
  region    = var.region
  size      = var.size
  image     = var.image
  ssh_keys  = var.ssh_key_fingerprints
  user_data = module.unlockd.user_data

  lifecycle {
    # The user-data carries a one-time token that changes at every plan (and is empty once the
    # host is enrolled): never replace the droplet for that.
    ignore_changes = [user_data]
  }
}
