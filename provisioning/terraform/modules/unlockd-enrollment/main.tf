# One-time enrollment token from the escrow server's admin API, and cloud-init user-data that
# installs the agent package and spends the token at first boot.
#
# A data source is read at every plan: before the host enrolls, each plan mints a fresh token
# (the unused ones expire after token_ttl_seconds); once the host is enrolled the server answers
# 409 host_exists and the user-data is rendered without a token. Either way the instance must
# ignore later changes of its user_data (lifecycle.ignore_changes), see the README.

locals {
  admin_url = coalesce(var.admin_url, var.server_url)

  response         = try(jsondecode(data.http.enroll_token.response_body), {})
  token_created    = data.http.enroll_token.status_code == 201
  already_enrolled = data.http.enroll_token.status_code == 409 && try(local.response.error, "") == "host_exists"
}

module "user_data" {
  source = "./user-data"

  server_url                  = var.server_url
  host_name                   = var.host_name
  enroll_token                = local.token_created ? try(local.response.token, "") : ""
  ca_pem                      = var.ca_pem
  agent_package_url           = var.agent_package_url
  agent_package_sha256        = var.agent_package_sha256
  luks_volumes                = var.luks_volumes
  luks_existing_key_file      = var.luks_existing_key_file
  fscrypt_dirs                = var.fscrypt_dirs
  fscrypt_enable_ext4_encrypt = var.fscrypt_enable_ext4_encrypt
}

data "http" "enroll_token" {
  url    = "${trimsuffix(local.admin_url, "/")}/v1/admin/tokens"
  method = "POST"
  request_headers = {
    Authorization = "Bearer ${var.operator_token}"
    Content-Type  = "application/json"
    Accept        = "application/json"
  }
  request_body = jsonencode({
    host       = var.host_name
    ttlSeconds = var.token_ttl_seconds
    cidrs      = var.enroll_cidrs
  })
  ca_cert_pem = var.ca_pem == "" ? null : var.ca_pem

  lifecycle {
    precondition {
      condition     = length(var.luks_volumes) == 0 || var.luks_existing_key_file != ""
      error_message = "luks_volumes need luks_existing_key_file: a file on the host with a key that already opens them."
    }
    postcondition {
      condition     = self.status_code == 201 || (self.status_code == 409 && try(jsondecode(self.response_body).error, "") == "host_exists")
      error_message = "The escrow server refused the enrollment token (HTTP ${self.status_code}): ${self.response_body}"
    }
  }
}
