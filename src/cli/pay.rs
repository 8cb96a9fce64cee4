//! `baton pay`: one payment, checked before it is published, and its result.

use super::*;
use crate::client::Client;
use anyhow::Context;
use baton_amqp::TlsOptions;
use baton_contract::{Limits, Names, Status};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use uuid::Uuid;

/// Options of `baton pay`.
#[derive(Debug, Args)]
pub struct PayArgs {
    /// A JSON request file; when given, the flags below are ignored
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Card number
    #[arg(long, default_value = "4242424242424242")]
    pub card: String,
    /// Card expiry, MM/YY
    #[arg(long, default_value = "12/30")]
    pub expiry: String,
    /// Amount in minor units (cents)
    #[arg(long, default_value_t = 1999)]
    pub amount: u64,
    /// Currency of the amount
    #[arg(long, default_value = "EUR")]
    pub currency: String,
    /// Currency the merchant settles in [default: the amount's currency]
    #[arg(long)]
    pub merchant_currency: Option<String>,
    /// Merchant id
    #[arg(long, default_value = "m-1001")]
    pub merchant: String,
    /// Customer id
    #[arg(long, default_value = "c-42")]
    pub customer: String,
    /// Payment id [default: a new UUID]
    #[arg(long)]
    pub payment_id: Option<Uuid>,
    /// Seconds to wait for the result
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

pub(super) async fn pay(common: &Common, names: Names, args: PayArgs) -> anyhow::Result<i32> {
    let body = match &args.file {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("cannot read the request file {}", path.display()))?,
        None => {
            let mut request = serde_json::json!({
                "payment_id": args.payment_id.unwrap_or_else(Uuid::new_v4).to_string(),
                "merchant_id": args.merchant,
                "customer_id": args.customer,
                "amount": {"minor": args.amount, "currency": args.currency},
                "card": {"number": args.card, "expiry": args.expiry},
            });
            if let Some(currency) = args.merchant_currency {
                request["merchant_currency"] = currency.into();
            }
            serde_json::to_vec(&request)?
        }
    };
    // Checked here, before anything is published: an orchestrator dead-letters a request
    // it cannot read without answering anyone (it has no payment id to answer), and this
    // command would wait out its timeout. The limits are the orchestrator's to enforce
    // (an amount over its limit is answered `rejected`).
    let unbounded = Limits {
        max_body_bytes: usize::MAX,
        max_amount_minor: u64::MAX,
    };
    let request = baton_contract::PaymentRequest::parse(&body, &unbounded).map_err(|invalid| {
        let what = match &args.file {
            Some(path) => format!("the request file {}", path.display()),
            None => "the request".to_owned(),
        };
        anyhow::anyhow!("{what} is not a valid payment request, nothing was published: {invalid}")
    })?;
    let payment_id = request.payment_id;
    let requests_queue = names.requests_queue();
    let mut client = Client::connect(
        &common.amqp_url,
        &TlsOptions::with_ca_file(common.amqp_ca_file.clone()),
        names,
    )
    .await?;
    let correlation = Uuid::new_v4().to_string();
    client.publisher().publish(&body, &correlation).await?;
    let timeout = Duration::from_secs(args.timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(received) = client.next_result(left).await else {
            let consumers = request_consumers(&client, &requests_queue).await;
            client.close().await;
            match consumers {
                // An orchestrator took the request: the payment is parked for a retry or
                // waiting for a service, and its result comes when it is decided.
                Some(n) if n > 0 => anyhow::bail!(
                    "no result within {} s: payment {payment_id} is still running (an \
                     orchestrator has it, parked for a retry or waiting for a service); its \
                     result will be published when decided: see `baton status {payment_id}`",
                    args.timeout
                ),
                _ => anyhow::bail!(
                    "no result within {} s: no orchestrator consumes {requests_queue}, where \
                     payment {payment_id} waits: start `baton run --prefix {}`",
                    args.timeout,
                    common.prefix
                ),
            }
        };
        if received.correlation_id.as_deref() != Some(correlation.as_str()) {
            continue;
        }
        let value: serde_json::Value = serde_json::from_slice(&received.body)?;
        println!("{}", serde_json::to_string_pretty(&value)?);
        client.close().await;
        let completed = received.result.map(|r| r.status) == Some(Status::Completed);
        return Ok(if completed { 0 } else { 1 });
    }
}

/// How many consumers the request queue has (orchestrators), if the broker says.
pub(super) async fn request_consumers(client: &Client, queue: &str) -> Option<u32> {
    let options = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let publisher = client.publisher();
    let declared = publisher
        .channel()
        .queue_declare(queue.into(), options, lapin::types::FieldTable::default())
        .await
        .ok()?;
    Some(declared.consumer_count())
}
