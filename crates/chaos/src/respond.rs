//! How a status fault's [`Answer`] becomes the service's response type.

use http::{HeaderValue, StatusCode, header::CONTENT_TYPE};

use crate::{error::ChaosError, fault::Answer};

/// Turns a status fault's [`Answer`] into the wrapped service's response, or into an error
/// where the response type cannot carry a status.
///
/// Chosen with [`ChaosBuilder::answer_with`](crate::ChaosBuilder::answer_with):
/// [`HttpAnswer`] (the default) for `http::Response<B>`, [`AnswerAsError`] for any other
/// response type, or a closure `Fn(Answer) -> Resp` that builds your own.
pub trait Respond<Resp> {
    /// The response, or the error, that stands for `answer`.
    fn respond(&self, answer: Answer) -> Result<Resp, ChaosError>;
}

impl<Resp, F: Fn(Answer) -> Resp> Respond<Resp> for F {
    fn respond(&self, answer: Answer) -> Result<Resp, ChaosError> {
        Ok(self(answer))
    }
}

/// Answers with an `http::Response<B>` whose body is `B::default()`: the status itself, or
/// for a gRPC code a trailers-only response (HTTP 200, `content-type: application/grpc`,
/// `grpc-status` and `grpc-message` in the headers), which tonic clients read as that status.
///
/// ```
/// use http::{Response, StatusCode};
/// use tower_patterns_chaos::{Answer, HttpAnswer, Respond};
///
/// let res: Response<String> = HttpAnswer.respond(Answer::Grpc(14)).unwrap();
/// assert_eq!(res.status(), StatusCode::OK);
/// assert_eq!(res.headers()["grpc-status"], "14");
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpAnswer;

impl<B: Default> Respond<http::Response<B>> for HttpAnswer {
    fn respond(&self, answer: Answer) -> Result<http::Response<B>, ChaosError> {
        let mut res = http::Response::new(B::default());
        match answer {
            Answer::Http(status) => *res.status_mut() = status,
            Answer::Grpc(code) => {
                let headers = res.headers_mut();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
                headers.insert("grpc-message", HeaderValue::from_static("fault%20injected"));
                *res.status_mut() = StatusCode::OK;
            }
        }
        Ok(res)
    }
}

/// Fails the call with a [`ChaosError`] carrying the answer, for services whose response
/// cannot hold a status. Core's HTTP mapping turns it back into that status (a gRPC code into
/// 503) if it reaches an HTTP edge.
///
/// ```
/// use tower_patterns_chaos::{Answer, AnswerAsError, Respond};
///
/// let err = Respond::<u32>::respond(&AnswerAsError, Answer::Grpc(14)).unwrap_err();
/// assert_eq!(err.answer(), Some(Answer::Grpc(14)));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct AnswerAsError;

impl<Resp> Respond<Resp> for AnswerAsError {
    fn respond(&self, answer: Answer) -> Result<Resp, ChaosError> {
        Err(ChaosError::answered(answer))
    }
}
